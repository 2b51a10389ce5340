"""Pack layout and epoch order (pure functions), and a pack read from a local S3 server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from subsets_fixtures import imagenet

from subsets.build import BuildConfig, build_subsets
from subsets.manifest import read_manifest
from subsets.pack import PackConfig, pack_manifests
from subsets.packlayout import manifest_priority, order_rows
from subsets.shards import epoch_order, open_pack


def _masks(sets: list[np.ndarray], n: int) -> np.ndarray:
    member = np.zeros(n, dtype=np.uint64)
    for bit, rows in enumerate(sets):
        member[rows] |= np.uint64(1 << bit)
    return member


def test_chain_manifests_are_prefixes_whatever_else_is_packed() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    shuffled = rng.permutation(n)
    chain = [shuffled[: int(n * f)] for f in (1.0, 0.5, 0.2, 0.1)]  # 100 % ⊃ 50 % ⊃ …
    val = np.arange(n, n + 50)
    other = rng.choice(n, 300, replace=False)  # overlaps the chain, not nested
    sets = [other, chain[2], val, chain[0], chain[3], chain[1]]  # bits in any order
    member = _masks(sets, n + 50)
    assert manifest_priority(member, len(sets)) == [3, 5, 1, 4, 0, 2]
    order = order_rows(member, rng.permutation(n + 50).astype(np.uint64), len(sets))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    for rows in chain:
        assert sorted(position[rows].tolist()) == list(range(len(rows)))
    assert sorted(position[val].tolist()) == list(range(n, n + 50))  # off-chain, disjoint: last


@pytest.mark.parametrize("window", [1, 3, 100])
def test_an_epoch_is_a_permutation_visiting_blocks_in_windows(window: int) -> None:
    blocks = np.repeat(np.arange(40), np.random.default_rng(1).integers(1, 9, 40))
    blocks = blocks[np.random.default_rng(2).permutation(len(blocks))]  # any row order
    order = epoch_order(blocks, seed=5, epoch=3, window=window)
    assert sorted(order.tolist()) == list(range(len(blocks)))
    assert np.array_equal(order, epoch_order(blocks.copy(), seed=5, epoch=3, window=window))
    assert not np.array_equal(order, epoch_order(blocks, seed=5, epoch=4, window=window))
    assert not np.array_equal(order, epoch_order(blocks, seed=6, epoch=3, window=window))
    # the order runs through windows of `window` whole blocks, one window after another
    seen = blocks[order]
    window_of = {}
    for position, block in enumerate(seen.tolist()):
        window_of.setdefault(block, set()).add(position)
    spans = sorted((min(p), max(p)) for p in window_of.values())
    groups = [spans[i : i + window] for i in range(0, len(spans), window)]
    for group in groups:  # a window's blocks fill one contiguous run of positions
        lo, hi = min(s[0] for s in group), max(s[1] for s in group)
        assert hi - lo + 1 == sum(len(window_of[int(seen[s[0]])]) for s in group)
    if window == 1:
        assert all(hi - lo + 1 == len(window_of[int(seen[lo])]) for lo, hi in spans)


def test_epoch_order_rejects_a_bad_window() -> None:
    with pytest.raises(ValueError, match=r"window: must be >= 1, got 0"):
        epoch_order(np.zeros(3), seed=0, epoch=0, window=0)


def test_a_pack_read_from_s3(tmp_path: Path, s3_server) -> None:
    root = imagenet(tmp_path, real=True)
    build_subsets(BuildConfig(out_dir=tmp_path / "m", train=root / "train"))
    manifests = tuple(tmp_path / "m" / f"in1k-{p}pct.parquet" for p in (10, 20, 50, 100))
    local = tmp_path / "pack"
    pack_manifests(
        PackConfig(
            manifests=manifests, root=root, out_dir=local, shard_bytes=9_000, block_bytes=2_000
        )
    )
    bucket = s3_server.bucket("packs")
    s3, _ = pafs.FileSystem.from_uri(bucket)
    pafs.copy_files(str(local), "packs/in1k", destination_filesystem=s3)
    pack = open_pack(f"{bucket}/in1k")
    assert pack.verify() == {} and len(pack.shards) > 2
    table, info = read_manifest(manifests[1], columns=["path", "key"])
    rows = pack.rows_of(table.column("key").to_numpy(), info.name)
    images = pack.read_rows(rows)
    assert images == [(root / p).read_bytes() for p in table.column("path").to_pylist()]
