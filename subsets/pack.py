"""Pack the images of manifests into Parquet shards: ``mimscale subsets pack``.

One pack holds the union of the images of its manifests (by ``key``), each image once,
as its encoded bytes. Layout (all under ``OUT/``)::

    shard-00000.parquet …   columns key (uint64), image (binary, the file's bytes, or
                            with ``--pixels`` its decoded pixels: scaling.data.pixels);
                            one row group per *block* of ~``block_bytes``; a shard
                            closes after ~``shard_bytes``
    index.parquet           key, path, shard, block, row (row within its shard), size,
                            offset (where the image's bytes start in its shard file);
                            one row per image in pack order; its metadata (JSON under
                            b"mimscale-pack") lists every shard with its blake2b digest,
                            the manifests packed (name, digest) and the options

**Nested subsets share one copy.** Rows are ordered by membership (:func:`subsets.
packlayout.order_rows`): the chain of nested manifests (``in1k-100pct`` ⊃ 50 % ⊃ 20 %
⊃ 10 %) becomes prefixes of the pack — the 10 % rows first, then the rest of 20 %, … —
so each fraction reads no byte it does not use; manifests off the chain (a val set,
``in100``) map to their rows through the index like any other. Within a membership
group rows are ordered by a fixed hash of their key, so every block is a random mix of
classes (a block-wise shuffle then mixes classes too).

**Deterministic**: the order depends only on the manifests (sorted by name), the bytes
on the image files and the options; no timestamps. **Streaming**: files are read by a
thread pool a window at a time and written a block at a time, so memory stays at a
few blocks whatever the data set size. Shards go to a temp folder first and are moved
into place only when every image was read: an error leaves ``OUT`` as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from subsets.errors import SubsetError
from subsets.keys import rank_keys
from subsets.manifest import manifest_digest, read_manifest
from subsets.outdir import check_out_folder
from subsets.packlayout import (
    FILES,
    INDEX_DIGEST,
    INDEX_NAME,
    PACK_FORMAT,
    PACK_KEY,
    PIXELS,
    PIXELS_FORMAT,
    index_digest,
    order_rows,
    union_rows,
)
from subsets.shardwriter import write_shards

logger = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """What to pack, from where, into where."""

    manifests: tuple[Path, ...]
    """Manifests whose images are packed (their union, each image once)."""
    root: Path
    """Data root the manifest paths are relative to."""
    out_dir: Path
    """Folder of the shards and ``index.parquet``."""
    shard_bytes: int = 768 * MiB
    """A shard closes once it holds this many image bytes (~0.5–1 GB files)."""
    block_bytes: int = 16 * MiB
    """A block (Parquet row group: one ranged read) closes at this many image bytes (at
    most ``shard_bytes``: a shard closes between blocks)."""
    block_rows: int = 4096
    """…or at this many rows."""
    workers: int = 8
    """Threads reading image files."""
    force: bool = False
    """Replace a pack already in ``out_dir``."""
    pixels: bool = False
    """Store each image decoded (:mod:`scaling.data.pixels`: the pixels every CPU decode
    mode reads, ~9× the bytes) instead of its file's bytes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifests", tuple(Path(m) for m in self.manifests))
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        checks = [
            (self.shard_bytes >= 1, "--shard-size", self.shard_bytes),
            (self.block_bytes >= 1, "--block-size", self.block_bytes),
            (self.block_rows >= 1, "--block-rows", self.block_rows),
            (self.workers >= 1, "--workers", self.workers),
        ]
        for ok, flag, value in checks:
            if not ok:
                raise SubsetError(f"{flag}: must be >= 1, got {value}")
        if not self.manifests:
            raise SubsetError("pack: name at least one manifest")
        # a shard closes between blocks: a block larger than a shard would hold it whole
        object.__setattr__(self, "block_bytes", min(self.block_bytes, self.shard_bytes))


def _index_table(keys, paths, where, meta: dict) -> pa.Table:
    shard_of, block_of, row_of, size_of, offset_of = where
    table = pa.table(
        {
            "key": pa.array(keys, pa.uint64()),
            "path": paths,
            "shard": pa.array(shard_of, pa.int32()),
            "block": pa.array(block_of, pa.int32()),
            "row": pa.array(row_of, pa.int64()),
            "size": pa.array(size_of, pa.int64()),
            "offset": pa.array(offset_of, pa.int64()),
        }
    )
    meta = {**meta, INDEX_DIGEST: index_digest(table, meta)}
    return table.replace_schema_metadata({PACK_KEY: json.dumps(meta, sort_keys=True).encode()})


@dataclass(frozen=True, kw_only=True)
class PackResult:
    """What a pack wrote."""

    out_dir: Path
    images: int
    image_bytes: int
    shards: list[dict]
    manifests: list[dict]


def pack_manifests(config: PackConfig) -> PackResult:
    """Pack the images of ``config.manifests`` into ``config.out_dir`` (module docstring)."""
    root = config.root.absolute()
    if not root.is_dir():
        raise SubsetError(
            f"--root {root}: {'a file, not a folder' if root.exists() else 'no such folder'}"
        )
    check_out_folder(config.out_dir, "--out")
    if (config.out_dir / INDEX_NAME).exists() and not config.force:
        raise SubsetError(f"{config.out_dir} already holds a pack; pass --force to replace it")
    for manifest in config.manifests:  # every row as it was built (a damaged key would
        manifest_digest(manifest)  # file an image under another image's key)
    loaded = sorted(
        ((*read_manifest(m, columns=["path", "key"]), m) for m in config.manifests),
        key=lambda t: (t[1].name, str(t[2])),
    )
    keys, paths, member = union_rows([(t, info.name) for t, info, _ in loaded])
    order = order_rows(member, rank_keys(keys, seed=PACK_FORMAT), len(loaded))
    keys, paths = keys[order], paths.take(pa.array(order))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(config.out_dir) / f".pack-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards, where = write_shards(tmp, config, keys, paths)
        manifests = [
            {"name": info.name, "digest": info.digest, "num_images": info.num_images}
            for _, info, _ in loaded
        ]
        meta = {
            "format": PIXELS_FORMAT if config.pixels else PACK_FORMAT,
            "shards": shards,
            "manifests": manifests,
            "images": len(keys),
            "block_bytes": config.block_bytes,
            "block_rows": config.block_rows,
            "shard_bytes": config.shard_bytes,
            "content": PIXELS if config.pixels else FILES,
        }
        index = _index_table(keys, paths, where, meta)
        pq.write_table(index, tmp / INDEX_NAME, write_page_checksum=True)
        _move_into_place(tmp, config.out_dir, [s["file"] for s in shards])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    image_bytes = int(sum(s["image_bytes"] for s in shards))
    logger.info("packed %d images (%d bytes) into %d shards", len(keys), image_bytes, len(shards))
    return PackResult(
        out_dir=config.out_dir,
        images=len(keys),
        image_bytes=image_bytes,
        shards=shards,
        manifests=manifests,
    )


def _move_into_place(tmp: Path, out_dir: Path, files: list[str]) -> None:
    """Shards first, the index last (a reader trusts only what the index lists)."""
    old_index = out_dir / INDEX_NAME
    if old_index.exists():
        old_index.unlink()  # the old pack stops being one before its shards change
    for stale in out_dir.glob("shard-*.parquet"):
        if stale.name not in files:
            stale.unlink()
    for name in files:
        os.replace(tmp / name, out_dir / name)
    os.replace(tmp / INDEX_NAME, old_index)
