"""Manifest files: one Parquet file per subset. Read them with :func:`read_manifest`.

Columns (rows sorted by (wnid, path), byte order)::

    path   string                        relative to the data root
    label  int32                         index into ManifestInfo.classes
    wnid   dictionary<int32, string>     == classes[label]
    split  string                        'train' or 'val'
    key    uint64                        subsets.keys.path_key(path): stable, per image

The Parquet key-value metadata holds one JSON object under ``b"mimscale"``
(:class:`ManifestInfo`: name, split, source kind/input/digest, seed, fraction,
holdout per class, class list, image count, format version, content digest). There
are no timestamps and the writer options are fixed, so the same inputs give the same
bytes (for a given pyarrow version, which Parquet records in its footer); the content
``digest`` is independent even of that.

Downstream use::

    table, info = read_manifest("manifests/in1k-10pct.parquet", columns=["path", "label"])
    info.classes, info.num_images, info.digest
    manifest_digest(path)        # the digest, once every row is checked against it (cached)
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from subsets.arrow import from_numpy, repeated_string, string_array, to_numpy
from subsets.atomic import atomic_path
from subsets.errors import SubsetError, no_file
from subsets.integrity import check_columns, check_fields, check_schema
from subsets.keys import path_keys

FORMAT_VERSION = 1
METADATA_KEY = b"mimscale"
ROW_GROUP_SIZE = 1 << 20
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.dictionary(pa.int32(), pa.string())),
        ("split", pa.string()),
        ("key", pa.uint64()),
    ]
)


@dataclass(frozen=True, kw_only=True)
class ManifestInfo:
    """What a manifest holds and how it was made (its Parquet metadata)."""

    name: str
    """Subset name, e.g. 'in1k-10pct'."""
    split: str
    """'train' or 'val'."""
    source_kind: str
    """Source kind: 'in1k', 'in22k', 'demo', 'folder'."""
    source_input: str
    """Which input of the source the rows were drawn from: 'train' or 'val'."""
    source_digest: str
    """Digest of that input (subsets.source.source_digest)."""
    seed: int
    """Selection seed."""
    fraction: float
    """Fraction of every class kept (1.0 for full sets)."""
    holdout_per_class: int
    """Images per class held out of the train input for the source's val set (0: none)."""
    class_subset: str | None
    """Named class list the classes were restricted to (e.g. 'in100_cmc'), or None."""
    classes: tuple[str, ...]
    """Class list: label i is classes[i]."""
    num_images: int
    """Number of rows."""
    format_version: int
    """Manifest format version."""
    digest: str
    """Content digest: blake2b-128 of this metadata (less the digest) and of the
    label and key columns."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def content_digest(fields: dict[str, Any], labels: np.ndarray, keys: np.ndarray) -> str:
    """The manifest digest over its metadata ``fields`` (without 'digest') and columns."""
    fields = {k: v for k, v in fields.items() if k != "digest"}
    fields["classes"] = list(fields["classes"])
    h = hashlib.blake2b(b"mimscale-manifest-v1", digest_size=16)
    h.update(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return h.hexdigest()


def manifest_table(
    paths: pa.Array, labels: np.ndarray, keys: np.ndarray, classes: tuple[str, ...], split: str
) -> pa.Table:
    """The manifest table for rows already sorted by (label, path)."""
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    return pa.Table.from_arrays(
        [
            paths,
            from_numpy(labels),
            pa.DictionaryArray.from_arrays(from_numpy(labels), string_array(list(classes))),
            repeated_string(split, len(labels)),
            from_numpy(np.asarray(keys, dtype=np.uint64)),
        ],
        schema=SCHEMA,
    )


def write_manifest(table: pa.Table, info: ManifestInfo, target: str | Path) -> None:
    """Write ``table`` with ``info`` as metadata: temp file + rename, fixed options."""
    table = table.replace_schema_metadata({METADATA_KEY: info.to_json().encode()})
    with atomic_path(target) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_SIZE,
            compression="zstd",
            compression_level=1,  # level 1 is both faster and (here) smaller than 3
            use_dictionary=["wnid", "split"],
            write_statistics=["label", "key"],  # min/max of 14M path strings cost a second
            store_schema=True,
        )


def _info_from_metadata(path: Path, metadata: dict[bytes, bytes] | None) -> ManifestInfo:
    raw = (metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise SubsetError(f"{path}: not a mimscale manifest (no {METADATA_KEY!r} metadata)")
    try:
        fields = json.loads(raw)
        if isinstance(fields, dict) and fields.get("format_version", 0) > FORMAT_VERSION:
            raise SubsetError(
                f"{path}: manifest format {fields['format_version']} is newer than this "
                f"mimscale reads ({FORMAT_VERSION})"
            )
        check_fields(fields)
        fields["classes"] = tuple(fields["classes"])
        return ManifestInfo(**fields)
    except SubsetError:  # a UserError, so a ValueError: keep its own message
        raise
    except (ValueError, TypeError, KeyError) as err:  # UnicodeDecodeError is a ValueError
        raise SubsetError(f"{path}: unreadable manifest metadata: {err}") from None


def read_manifest_info(path: str | Path) -> ManifestInfo:
    """The metadata of a manifest, reading only the Parquet footer."""
    path = Path(path)
    if not path.is_file():
        raise no_file("manifest", path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise SubsetError(f"{path}: not a Parquet file ({err})") from None
    return _info_from_metadata(path, schema.metadata)


_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}


def _codes(column: pa.ChunkedArray, names: list[str]) -> np.ndarray:
    """Each value's position in ``names``, -1 for a value not in it (any chunking)."""
    index = {name: i for i, name in enumerate(names)}
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        lut = np.array([index.get(v, -1) for v in chunk.dictionary.to_pylist()], dtype=np.int64)
        parts.append(lut[to_numpy(chunk.indices)] if len(lut) else np.empty(0, np.int64))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _row_problem(table: pa.Table, info: ManifestInfo, pool: ThreadPoolExecutor) -> str | None:
    """What makes the rows disagree with the metadata, or None."""
    if table.num_rows != info.num_images:
        return f"it has {table.num_rows} rows, its metadata says {info.num_images}"
    labels, keys = to_numpy(table.column("label")), to_numpy(table.column("key"))
    recorded = pool.submit(content_digest, asdict(info), labels, keys)
    bad_keys = path_keys(table.column("path")) != keys
    if bad_keys.any():
        return f"row {_first(bad_keys)}: its key is not the hash of its path"
    bad_wnids = _codes(table.column("wnid"), list(info.classes)) != labels
    if bad_wnids.any():
        return f"row {_first(bad_wnids)}: its wnid is not classes[label]"
    bad_splits = _codes(table.column("split"), [info.split]) != 0
    if bad_splits.any():
        return f"row {_first(bad_splits)}: its split is not {info.split!r}"
    if recorded.result() != info.digest:
        return f"its labels and keys do not match the digest {info.digest[:16]}… in its metadata"
    return None


def _read_rows(path: Path) -> pa.Table:
    """All five columns, ``split`` kept dictionary-encoded; damage named as read_manifest does."""
    try:
        check_schema(path, pq.read_schema(path), SCHEMA, SCHEMA.names)
        table = pq.read_table(path, columns=SCHEMA.names, read_dictionary=["split"])
    except (pa.ArrowException, OSError) as err:
        raise SubsetError(f"{path}: unreadable Parquet data ({err})") from None
    check_columns(path, table)
    return table


def manifest_digest(path: str | Path) -> str:
    """The digest that keys a cell, once the manifest's rows are checked against it.

    The digest is the one recorded at build time (:attr:`ManifestInfo.digest`, over the
    metadata, labels and keys), so ``plan`` reads only the footer and cell ids do not
    change. Before it is trusted, every row is checked to be the row it was built as:
    the count, the digest recomputed from the labels and keys, every key recomputed from
    its path, wnid == classes[label], split. So any changed value is refused (a
    SubsetError naming the file and the first offending row: rebuild the manifest), and
    a rebuilt manifest with other rows has another digest. About 5 s for IN-22K's 14.1M
    rows on two busy cores (the footer alone: ~10 ms). Cached per file (device, inode,
    size, mtime) within a process, so a grid reads each manifest once.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise no_file("manifest", path) from None
    cache_key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if cache_key not in _VERIFIED:
        info = read_manifest_info(path)
        table = _read_rows(path)
        with ThreadPoolExecutor(1) as pool:  # the recorded digest is hashed meanwhile
            problem = _row_problem(table, info, pool)
        if problem:
            raise SubsetError(
                f"{path}: the rows were changed after the manifest was built ({problem}); "
                "rebuild it with `mimscale subsets build`"
            )
        _VERIFIED[cache_key] = info.digest
    return _VERIFIED[cache_key]


def read_manifest(
    path: str | Path, columns: list[str] | None = None, *, as_pandas: bool = False
) -> tuple[pa.Table | Any, ManifestInfo]:
    """(rows, info) of a manifest; ``columns`` selects columns, ``as_pandas`` a DataFrame.

    A damaged file (a column missing or mistyped, unreadable pages, nulls, strings that
    are not UTF-8) raises SubsetError naming the file and what is wrong.
    """
    info = read_manifest_info(path)
    unknown = sorted(set(columns or ()) - set(SCHEMA.names))
    if unknown:
        raise SubsetError(f"{path}: unknown columns {unknown}; valid: {SCHEMA.names}")
    path = Path(path)
    try:
        check_schema(path, pq.read_schema(path), SCHEMA, columns or SCHEMA.names)
        table = pq.read_table(path, columns=columns or SCHEMA.names)
    except (pa.ArrowException, OSError) as err:
        raise SubsetError(f"{path}: unreadable Parquet data ({err})") from None
    check_columns(path, table)
    return (table.to_pandas() if as_pandas else table), info
