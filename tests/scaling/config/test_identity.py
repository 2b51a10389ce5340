"""Stage ids are stable: ids pinned here (stage format 3) must come out of later code
unchanged — a changed id would silently orphan every finished stage of every study on
disk. Changing what a stage's results depend on is a format bump, not a refactor."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.config.identity import finetune_id, pretrain_id
from scaling.config.load import load_study

STUDY = """
name = "golden"
output_dir = "/tmp/golden/out"

[data]
manifest_dir = "/nonexistent/manifests"
root = "/nonexistent"
val = "demo-val"
finetune_train = "demo-100pct"
finetune_val = "demo-val"
num_workers = 0

[grid]
models = ["swinv2-nano", "vit-nano"]
data = ["demo-25pct"]
iterations = [40, 80]
seeds = [0, 1]

[pretrain]
batch_size = 16
image_size = 32
mask_patch_size = 8
base_lr = 2e-3
val_interval = 10

[finetune]
epochs = 1.0
batch_size = 16
image_size = 32
layer_decay = 0.65

[resources]
cpus = 1
"""

RECORDED = [  # (model, iterations, seed, pre-training id, fine-tuning id)
    ("swinv2-nano", 40, 0, "640772915acd7f9f", "985a4fdb7e5ac431"),
    ("swinv2-nano", 40, 1, "a997208ed0a7c7fc", "b655dc0e9cf7f9ba"),
    ("swinv2-nano", 80, 0, "e667b1745ebca4ed", "a0b81932dbf6ec37"),
    ("swinv2-nano", 80, 1, "45d19205334e669c", "9bf1e3ee28bfdd23"),
    ("vit-nano", 40, 0, "9b3ceb2fd3840a27", "d7dbbe1ffd64b92d"),
    ("vit-nano", 40, 1, "ec1297e21159b02d", "34f95debee89174d"),
    ("vit-nano", 80, 0, "538fc9e43668ad71", "b8ba117fdb2bba28"),
    ("vit-nano", 80, 1, "c30433362fe3d2f7", "a766408ebefff963"),
]


@pytest.fixture
def study(tmp_path: Path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    return load_study(path)


def test_stage_ids_are_pinned(study) -> None:
    got = []
    for cell in study.cells():
        digests = {n: n.encode().hex().ljust(32, "0")[:32] for n in cell.subsets()}
        ids = (pretrain_id(cell, digests), finetune_id(cell, digests))
        got.append((cell.model, cell.iterations, cell.seed, *ids))
    assert got == RECORDED


def test_reading_and_later_fields_enter_ids_only_when_used(study) -> None:
    """Packed data (its shard-aware order, not where the pack lives), the decode mode and
    the decay set change a stage's id; at their defaults they leave the pinned ids alone."""
    import dataclasses

    cell = study.cells()[0]
    digests = {n: "0" * 32 for n in cell.subsets()}

    def ids(c) -> tuple[str, str]:
        return pretrain_id(c, digests), finetune_id(c, digests)

    def with_data(**kw):
        return dataclasses.replace(cell, data_config=dataclasses.replace(cell.data_config, **kw))

    base = ids(cell)
    here, there = with_data(packed="/packs/demo"), with_data(packed="s3://bucket/packs/demo")
    assert ids(here) == ids(there) != base
    assert ids(with_data(packed="/packs/demo", shard_window=8)) != ids(here)
    assert ids(with_data(shard_window=8)) == base  # no pack: the window is unused
    for field, value in (("decode", "exact"), ("weight_decay_set", "released")):
        changed = dataclasses.replace(
            cell, pretrain=dataclasses.replace(cell.pretrain, **{field: value})
        )
        assert ids(changed)[0] != base[0], field
