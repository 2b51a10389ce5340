"""Loaders reading a pack (``packed=``) keep every guarantee of the per-file loaders:
order a pure function of (seed, step), exact resume, the union of a step over ranks
independent of the world size, every sample once per epoch, bad images counted — and
give the same pixels for the same (epoch, index)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from subsets_fixtures import imagenet

from scaling.data.finetune import build_finetune_loaders
from scaling.data.manifest import CheckedLoader, read_manifest
from scaling.data.masking import MaskGenerator
from scaling.data.pretrain import (
    PretrainDataset,
    build_pretrain_loader,
    build_val_loader,
)
from scaling.data.source import FileSource, PackSource
from scaling.errors import UserError
from subsets.build import BuildConfig, build_subsets
from subsets.pack import PackConfig, pack_manifests

SIZE = 32
MASK = MaskGenerator(input_size=SIZE, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)


@pytest.fixture(scope="module")
def packed(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo set packed in small blocks (many blocks, several shards)."""
    out = tmp_path_factory.mktemp("demo-pack")
    manifests = tuple(sorted((demo_dir / "manifests").glob("*.parquet")))
    pack_manifests(PackConfig(manifests=manifests, root=demo_dir, out_dir=out,
                              shard_bytes=200_000, block_bytes=16_000))  # fmt: skip
    return out


def _manifest(demo_dir: Path, name: str) -> Path:
    return demo_dir / "manifests" / f"{name}.parquet"


def pretrain(demo_dir: Path, packed: Path | None, **kw: object) -> CheckedLoader:
    args = {"manifest": _manifest(demo_dir, "demo-50pct"), "root": demo_dir, "image_size": SIZE}
    args |= {"mask": MASK, "batch_size": 8, "seed": 3, "num_workers": 0, "packed": packed}
    return build_pretrain_loader(**(args | kw))


def take(loader, steps: int) -> list:
    return list(itertools.islice(loader, steps))


def same(a: list, b: list) -> bool:
    return all(
        torch.equal(x, y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True)
    )


def test_a_packed_step_is_a_pure_function_of_seed_and_step(demo_dir: Path, packed: Path) -> None:
    straight = take(pretrain(demo_dir, packed), 6)
    assert same(straight, take(pretrain(demo_dir, packed, num_workers=2), 6))
    assert same(straight[4:], take(pretrain(demo_dir, packed, start_step=4), 2))
    other = take(pretrain(demo_dir, packed, seed=4), 1)
    assert not torch.equal(other[0][0], straight[0][0])


def test_the_union_of_a_step_over_ranks_does_not_depend_on_the_world_size(
    demo_dir: Path, packed: Path
) -> None:
    single = pretrain(demo_dir, packed, batch_size=8).batch_sampler
    ranks = [pretrain(demo_dir, packed, batch_size=4, rank=r, world_size=2).batch_sampler
             for r in range(2)]  # fmt: skip
    for step in (0, 5, 47, 48):
        assert single.batch(step) == ranks[0].batch(step) + ranks[1].batch(step)


def test_every_sample_once_per_epoch_in_block_order(demo_dir: Path, packed: Path) -> None:
    loader = pretrain(demo_dir, packed, batch_size=16, drop_last=False)
    sampler, source = loader.batch_sampler, loader.dataset.source
    n = len(source.manifest)
    for epoch in (0, 1):
        order = sampler.permutation(epoch)
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(sampler.permutation(0), sampler.permutation(1))
    pairs = [p for batch in take(sampler, int(np.ceil(n / 16))) for p in batch][:n]
    assert sorted(i for _, i in pairs) == list(range(n))
    blocks = source.view.blocks[sampler.permutation(0)]
    assert len(set(blocks[:32].tolist())) <= 8  # a window of 4 blocks (~10 rows each) at a time
    one = pretrain(demo_dir, packed, batch_size=16, shard_window=1).batch_sampler
    blocks = source.view.blocks[one.permutation(3)]
    switches = int((blocks[1:] != blocks[:-1]).sum())
    assert switches == len(np.unique(blocks)) - 1  # block after block


def test_pack_and_files_give_the_same_pixels(demo_dir: Path, packed: Path) -> None:
    m = read_manifest(_manifest(demo_dir, "demo-25pct"))
    for decode in ("fast", "exact"):
        kw = {"image_size": SIZE, "mask": MASK, "seed": 1, "decode": decode}
        files = PretrainDataset(FileSource(m, demo_dir), **kw)
        pack = PretrainDataset(PackSource(m, packed), **kw)
        for item in [(0, 0), (2, 17), (5, len(m) - 1)]:
            a, b = files[item], pack[item]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] == []


def test_packed_validation_reads_in_pack_order_and_splits_ranks_in_runs(
    demo_dir: Path, packed: Path
) -> None:
    args = {"manifest": _manifest(demo_dir, "demo-val"), "root": demo_dir, "image_size": SIZE}
    args |= {"mask": MASK, "batch_size": 32, "num_workers": 0}
    files, pack = build_val_loader(**args), build_val_loader(**args, packed=packed)
    order = pack.dataset.indices
    assert sorted(order.tolist()) == list(range(len(order)))
    rows = pack.dataset.source.view.rows[order]
    assert np.all(np.diff(rows) > 0)  # pack order
    by_index = {int(i): (x, m) for i, (x, m) in zip(order, _items(pack), strict=True)}
    for i, (x, m) in zip(files.dataset.indices, _items(files), strict=True):
        assert torch.equal(by_index[int(i)][0], x) and torch.equal(by_index[int(i)][1], m)
    parts = [build_val_loader(**args, packed=packed, rank=r, world_size=3).dataset.indices
             for r in range(3)]  # fmt: skip
    assert np.array_equal(np.concatenate(parts), order)


def _items(loader: CheckedLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, m) for xs, ms in loader for x, m in zip(xs, ms, strict=True)]


def test_bad_images_inside_shards_are_counted_and_replaced(tmp_path: Path, caplog) -> None:
    root = imagenet(tmp_path, real=True)
    build_subsets(BuildConfig(out_dir=tmp_path / "m", train=root / "train",
                              subsets=("in1k-100pct",)))  # fmt: skip
    manifest = tmp_path / "m" / "in1k-100pct.parquet"
    m = read_manifest(manifest)
    victim = root / m.path(1)
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated JPEG, packed as it is
    pack_manifests(PackConfig(manifests=(manifest,), root=root, out_dir=tmp_path / "p",
                              block_bytes=2_000))  # fmt: skip
    args = {"manifest": manifest, "root": root, "image_size": SIZE, "mask": MASK}
    val = build_val_loader(**args, batch_size=72, num_workers=0, packed=tmp_path / "p")
    ((images, _),) = list(val)
    assert val.num_bad_images == 1 and images.shape[0] == 72
    assert f"{m.path(1)} in the pack {tmp_path / 'p'}" in caplog.text
    loader = build_pretrain_loader(
        **args, batch_size=8, seed=0, num_workers=2, packed=tmp_path / "p"
    )
    take(loader, 9)  # a whole epoch: the bad image comes up once
    assert loader.num_bad_images == 1
    loader.close()


def test_a_manifest_missing_from_the_pack_is_a_user_error(demo_dir: Path, tmp_path: Path) -> None:
    pack_manifests(PackConfig(manifests=(_manifest(demo_dir, "demo-25pct"),), root=demo_dir,
                              out_dir=tmp_path / "p"))  # fmt: skip
    with pytest.raises(UserError, match=r"demo-50pct\.parquet: \d+ of its \d+ images are not in "
                                        r"the pack"):  # fmt: skip
        pretrain(demo_dir, tmp_path / "p")


def test_finetune_loaders_read_a_pack(demo_dir: Path, packed: Path) -> None:
    args = {"train_manifest": _manifest(demo_dir, "demo-25pct"), "root": demo_dir}
    args |= {"val_manifest": _manifest(demo_dir, "demo-val"), "image_size": SIZE}
    args |= {"batch_size": 8, "seed": 2, "num_workers": 0, "packed": packed}
    a = build_finetune_loaders(**args)
    b = build_finetune_loaders(**(args | {"num_workers": 2}))
    assert same(take(a.train, 3), take(b.train, 3))
    images, labels = next(iter(a.val))
    assert images.shape == (8, 3, SIZE, SIZE) and labels.dtype == torch.int64
    b.train.close()
