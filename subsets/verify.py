"""Check a manifest against its metadata and the images under a data root.

Checks: metadata readable; row count, sort order, split, labels (in range and equal to
the wnid's index in the class list), keys (recomputed from the paths) and the content
digest agree with the metadata; every path is a file under the root; with
``decode=True`` every image also decodes (Pillow, a thread pool).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from subsets.arrow import to_numpy
from subsets.keys import keys_of_words
from subsets.manifest import ManifestInfo, content_digest, read_manifest
from subsets.packed import pack
from subsets.scan import DEFAULT_WORKERS, check_root

logger = logging.getLogger(__name__)

_BATCH = 512  # paths per thread-pool task


@dataclass(kw_only=True)
class VerifyReport:
    """Problems found in one manifest, by kind; each list holds the first offenders."""

    manifest: Path
    info: ManifestInfo
    checked: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    """Count of offending rows per kind of problem ('missing', 'undecodable', …)."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first offenders per kind (a path and why)."""

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, kind: str, count: int, examples: list[str], limit: int) -> None:
        if count:
            self.problems[kind] = self.problems.get(kind, 0) + count
            self.examples.setdefault(kind, []).extend(examples)
            del self.examples[kind][limit:]


def _check_table(report: VerifyReport, table: pa.Table, limit: int) -> None:
    info, paths = report.info, table.column("path").combine_chunks()
    labels = to_numpy(table.column("label"))
    n = table.num_rows
    if n != info.num_images:
        report.add("metadata", 1, [f"{n} rows, metadata says {info.num_images}"], limit)
        return  # the row-wise checks would compare columns of different lengths

    def rows(bad: np.ndarray, why: str) -> tuple[int, list[str]]:
        idx = np.flatnonzero(bad)
        return len(idx), [f"row {i}: {paths[int(i)].as_py()}: {why}" for i in idx[:limit]]

    wnid = table.column("wnid").combine_chunks()
    if not pa.types.is_dictionary(wnid.type):
        wnid = wnid.dictionary_encode()
    index = {w: i for i, w in enumerate(info.classes)}
    lut = np.array([index.get(w, -1) for w in wnid.dictionary.to_pylist()], dtype=np.int64)
    wnid_label = lut[to_numpy(wnid.indices)] if n else lut[:0]
    report.add("label", *rows(wnid_label != labels, "label disagrees with the class list"), limit)
    report.add(
        "split",
        *rows(
            to_numpy(pc.not_equal(table.column("split"), info.split)),
            f"split is not {info.split}",
        ),
        limit,
    )
    keys = to_numpy(table.column("key"))
    packed = pack(paths)
    expected = keys_of_words(packed.words, packed.lengths)
    report.add("key", *rows(keys != expected, "key is not path_key(path)"), limit)
    text = packed.as_bytes()
    before = (labels[1:] < labels[:-1]) | ((labels[1:] == labels[:-1]) & (text[1:] < text[:-1]))
    unsorted = np.concatenate([[False], before])
    report.add("order", *rows(unsorted, "sorts before the row above (wnid, path)"), limit)
    if content_digest(asdict(info), labels, keys) != info.digest:
        report.add("digest", 1, [f"content digest is not {info.digest}"], limit)


def _check_file(path: str, decode: bool) -> str | None:
    if not os.path.isfile(path):
        return "missing"
    if decode:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except Exception as err:
            return f"undecodable: {type(err).__name__}: {err}"
    return None


def _check_batch(paths: list[str], root: Path, decode: bool) -> list[tuple[str, str]]:
    findings = ((p, _check_file(os.path.join(root, p), decode)) for p in paths)
    return [(p, f) for p, f in findings if f is not None]


def verify_manifest(
    manifest: str | Path,
    root: str | Path,
    *,
    decode: bool = False,
    workers: int = DEFAULT_WORKERS,
    limit: int = 10,
) -> VerifyReport:
    """Verify ``manifest`` against the images under the data root ``root``."""
    root = check_root(Path(root), "root")
    table, info = read_manifest(manifest)
    report = VerifyReport(manifest=Path(manifest), info=info, checked=table.num_rows)
    _check_table(report, table, limit)
    paths = table.column("path").to_pylist()
    batches = [paths[i : i + _BATCH] for i in range(0, len(paths), _BATCH)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for findings in pool.map(partial(_check_batch, root=root, decode=decode), batches):
            for path, finding in findings:
                kind = "missing" if finding == "missing" else "undecodable"
                report.add(kind, 1, [f"{path}: {finding}"], limit)
    if not report.ok:
        logger.warning("%s: %s", manifest, report.problems)
    return report
