"""Pre-training and validation loaders: determinism, exact resume, bad images, manifests."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import write_tree

from scaling.data.manifest import BAD_IMAGE_FLOOR, MAX_REPLACEMENTS, CheckedLoader
from scaling.data.masking import MaskGenerator
from scaling.data.pretrain import (
    DataError,
    build_pretrain_loader,
    build_val_loader,
    normalize,
    read_manifest,
)

SIZE = 32
MASK = MaskGenerator(input_size=SIZE, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    manifest, _ = write_tree(root, 24)
    return root, manifest


def pretrain(tree: tuple[Path, Path], **kw: object) -> CheckedLoader:
    root, manifest = tree
    args = {"manifest": manifest, "root": root, "image_size": SIZE, "mask": MASK}
    args |= {"batch_size": 4, "seed": 7, "num_workers": 0} | kw
    return build_pretrain_loader(**args)


def take(loader: CheckedLoader, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(loader, steps))


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ma), (xb, mb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ma, mb)


def test_pretrain_batches_have_the_promised_shapes(tree: tuple[Path, Path]) -> None:
    images, masks = next(iter(pretrain(tree)))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert masks.shape == (4, 8, 8) and masks.dtype == torch.uint8
    assert (masks.reshape(4, -1).sum(1) == 10 * 4).all()  # ceil(0.6·16) = 10 blocks of 2×2


def test_same_seed_and_step_give_the_same_batch_with_0_and_2_workers(
    tree: tuple[Path, Path],
) -> None:
    serial = take(pretrain(tree, num_workers=0), 8)  # crosses into the second epoch
    assert_same(serial, take(pretrain(tree, num_workers=2), 8))
    assert not torch.equal(serial[0][0], take(pretrain(tree, seed=8), 1)[0][0])


@pytest.mark.parametrize("start", [2, 7])
def test_resume_at_step_k_equals_the_uninterrupted_stream(
    tree: tuple[Path, Path], start: int
) -> None:
    straight = take(pretrain(tree), 10)
    assert_same(take(pretrain(tree, start_step=start), 10 - start), straight[start:])


def test_global_rngs_are_untouched(tree: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    take(pretrain(tree), 2)
    list(build_val(tree))
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_sampler_position_and_epochs_are_exposed(tree: tuple[Path, Path]) -> None:
    sampler = pretrain(tree, start_step=3).batch_sampler
    assert sampler.start_step == 3 and sampler.steps_per_epoch == 6
    assert sampler.epochs_seen(12) == 2


def build_val(tree: tuple[Path, Path], **kw: object) -> CheckedLoader:
    root, manifest = tree
    args = {"manifest": manifest, "root": root, "image_size": SIZE, "mask": MASK}
    return build_val_loader(**(args | {"batch_size": 5, "num_workers": 0} | kw))


def test_val_batches_are_identical_across_runs_with_fixed_masks(tree: tuple[Path, Path]) -> None:
    first = list(build_val(tree))
    assert [len(x) for x, _ in first] == [5, 5, 5, 5, 4]
    assert_same(first, list(build_val(tree, num_workers=2)))
    keys = read_manifest(tree[1]).keys
    masks = torch.cat([m for _, m in first])
    for key, mask in zip(keys, masks, strict=True):
        assert np.array_equal(mask.numpy(), MASK.val_mask(int(key)))


def test_val_limit_keeps_the_smallest_keys_and_ranks_split_the_rest(
    tree: tuple[Path, Path],
) -> None:
    keys = read_manifest(tree[1]).keys
    limited = build_val(tree, limit=10).dataset
    assert set(keys[limited.indices]) == set(np.sort(keys)[:10])
    shards = [build_val(tree, rank=r, world_size=3).dataset.indices for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(24))


def test_normalize_matches_to_tensor_and_normalize() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    out = normalize(images, "cpu", channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def break_images(root: Path, paths: list[str], corrupt: int, missing: int) -> list[str]:
    for rel in paths[:corrupt]:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 3])
    for rel in paths[corrupt : corrupt + missing]:
        (root / rel).unlink()
    return paths[: corrupt + missing]


def test_bad_images_are_logged_counted_and_replaced_by_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, paths = write_tree(tmp_path, 24)
    clean_root = tmp_path / "clean"
    write_tree(clean_root, 24)
    broken = break_images(tmp_path, paths, 1, 1)  # rows 0 and 1 of the manifest
    val = build_val((tmp_path, manifest), batch_size=24)
    with caplog.at_level(logging.WARNING, logger="scaling.data.manifest"):
        ((images, _),) = list(val)
    assert val.num_bad_images == 2
    for rel in broken:
        assert any(rel in r.getMessage() for r in caplog.records)
    clean, _ = next(iter(build_val((clean_root, clean_root / "train.parquet"), batch_size=24)))
    assert torch.equal(images[0], clean[2]) and torch.equal(images[1], clean[2])
    assert torch.equal(images[2:], clean[2:])
    # The pre-training loader replaces them too, in both worker modes, identically.
    assert_same(
        take(pretrain((tmp_path, manifest)), 6),
        take(pretrain((tmp_path, manifest), num_workers=2), 6),
    )


def test_too_many_bad_images_stop_with_a_data_error(tmp_path: Path) -> None:
    manifest, paths = write_tree(tmp_path, 24)
    broken = break_images(tmp_path, paths[::2], BAD_IMAGE_FLOOR - 2, 3)  # floor + 1, not adjacent
    loader = pretrain((tmp_path, manifest), num_workers=2)
    message = (
        rf"train.parquet: {BAD_IMAGE_FLOOR + 1} of 24 images are unreadable, "
        rf"more than the {BAD_IMAGE_FLOOR} allowed .*e\.g\. .*{broken[0]}"
    )
    with pytest.raises(DataError, match=message) as info:
        take(loader, 30)
    assert info.value.exit_code == 2


def test_a_wrong_data_root_fails_early(tree: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="none of its first 8 images exists under the data root"):
        pretrain((tmp_path, tree[1]))


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.parquet: cannot read manifest"):
        read_manifest(tmp_path / "nope.parquet")
    pq.write_table(
        pa.table({"path": ["a.jpg"], "label": pa.array([0], pa.int32())}), tmp_path / "m.parquet"
    )
    with pytest.raises(DataError, match=r"m.parquet: manifest lacks columns \['key'\]"):
        read_manifest(tmp_path / "m.parquet")


def test_manifest_metadata_is_read(tree: tuple[Path, Path]) -> None:
    m = read_manifest(tree[1])
    assert m.classes == ("n001", "n002", "n003") and m.num_classes == 3 and len(m) == 24
    assert m.labels.dtype == np.int64 and m.keys.dtype == np.uint64


def test_mask_and_image_size_must_agree(tree: tuple[Path, Path]) -> None:
    with pytest.raises(
        ValueError, match="image_size: 64 differs from the mask generator's input_size 32"
    ):
        pretrain(tree, image_size=64)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_of_unreadable_images_stops_the_worker_with_a_data_error(
    tmp_path: Path, workers: int
) -> None:
    manifest, paths = write_tree(tmp_path, 8 + MAX_REPLACEMENTS)
    for rel in paths[8:]:  # the first 8 exist, so the early root check passes
        (tmp_path / rel).unlink()
    loader = build_val((tmp_path, manifest), batch_size=10, num_workers=workers)
    with pytest.raises(DataError, match=rf"{MAX_REPLACEMENTS} consecutive images are unreadable"):
        list(loader)
    loader.close()
