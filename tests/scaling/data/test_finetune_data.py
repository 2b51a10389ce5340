"""Fine-tuning loaders (timm transforms, seeded per sample) and seeded Mixup/CutMix."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_manifest, write_tree

from scaling.data.finetune import FinetuneLoaders, build_finetune_loaders, build_mixup, seeded_rngs
from scaling.data.pretrain import DataError, read_manifest

SIZE = 32


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ft")
    train, _ = write_tree(root, 16, split="train", seed=1)
    val, _ = write_tree(root, 7, split="val", seed=2)
    return root, train, val


def loaders(trees: tuple[Path, Path, Path], **kw: object) -> FinetuneLoaders:
    root, train, val = trees
    args = {"train_manifest": train, "val_manifest": val, "root": root, "image_size": SIZE}
    args |= {"batch_size": 4, "seed": 3, "num_workers": 0} | kw
    return build_finetune_loaders(**args)


def test_shapes_and_labels(trees: tuple[Path, Path, Path]) -> None:
    ft = loaders(trees)
    assert ft.num_classes == 3
    images, labels = next(iter(ft.train))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
    batch = ft.train.batch_sampler.batch(0)
    expected = read_manifest(trees[1]).labels[[i for _, i in batch]]
    assert labels.dtype == torch.int64 and labels.tolist() == expected.tolist()
    val = list(ft.val)
    assert [len(y) for _, y in val] == [4, 3]
    assert torch.cat([y for _, y in val]).tolist() == read_manifest(trees[2]).labels.tolist()
    assert val[0][0].shape == (4, 3, SIZE, SIZE)


def test_train_batches_are_a_pure_function_of_seed_and_step(
    trees: tuple[Path, Path, Path],
) -> None:
    first = list(itertools.islice(loaders(trees).train, 5))
    random.seed(123)  # the global RNGs must not matter
    torch.manual_seed(123)
    again = list(itertools.islice(loaders(trees, num_workers=2).train, 5))
    resumed = list(itertools.islice(loaders(trees, start_step=2).train, 3))
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, _), (x2, _) in zip(first[2:], resumed, strict=True):
        assert torch.equal(x, x2)
    other = next(iter(loaders(trees, seed=4).train))[0]
    assert not torch.equal(first[0][0], other)


def test_val_loader_is_deterministic(trees: tuple[Path, Path, Path]) -> None:
    a = torch.cat([x for x, _ in loaders(trees).val])
    b = torch.cat([x for x, _ in loaders(trees, seed=9).val])
    assert torch.equal(a, b)


def test_mismatched_class_lists_are_refused(trees: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, train, _ = trees
    m = read_manifest(trees[2])
    other = write_manifest(
        tmp_path / "val.parquet", m.paths.to_pylist(), m.labels.tolist(), ["a", "b", "c"]
    )
    with pytest.raises(DataError, match=r"val.parquet: its class list \(3 classes\) differs from"):
        loaders((root, train, other))


def test_seeded_rngs_seed_all_three_and_restore_them() -> None:
    random.seed(5)
    torch.manual_seed(5)
    state = random.getstate(), torch.get_rng_state()
    with seeded_rngs(1, 2, 3):
        a = random.random(), float(np.random.rand()), float(torch.rand(()))
    with seeded_rngs(1, 2, 3):
        b = random.random(), float(np.random.rand()), float(torch.rand(()))
    assert a == b
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])


def test_mixup_is_seeded_per_step() -> None:
    assert build_mixup(mixup=0, cutmix=0, label_smoothing=0.1, num_classes=5) is None
    mix = build_mixup(mixup=0.8, cutmix=1.0, label_smoothing=0.1, num_classes=5, seed=1)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out1, t1 = mix(x.clone(), y, step=7)
    out2, t2 = mix(x.clone(), y, step=7)
    out3, _ = mix(x.clone(), y, step=8)
    assert torch.equal(out1, out2) and torch.equal(t1, t2) and not torch.equal(out1, out3)
    assert t1.shape == (4, 5)
    torch.testing.assert_close(t1.sum(1), torch.ones(4))


def test_randaugment_posterize_at_full_magnitude_works() -> None:
    """timm's increasing posterize reaches 0 bits; Pillow 13 rejects that (pinned < 13)."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert posterize(image, 0).getpixel((0, 0)) == (0, 0, 0)
