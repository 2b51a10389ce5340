"""Cell ids are stable across refactors: ids recorded from the flat layout (commit e80e4eb,
before ``scaling/`` became rooms) must come out of today's code unchanged — a changed id
would silently orphan every finished cell of every study on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.config.identity import cell_id, config_key, study_hash
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

RECORDED = [  # (model, iterations, seed, cell_id, config_key) as e80e4eb computed them
    ("swinv2-nano", 40, 0, "804ffefe119f52f3", "9d718e04f151019f"),
    ("swinv2-nano", 40, 1, "f58694a71e6a6937", "64f22a209a9d656a"),
    ("swinv2-nano", 80, 0, "eed4db6bf1f56c5a", "41d1a30546840c90"),
    ("swinv2-nano", 80, 1, "4921a8dfe18b6f31", "79d33e136a040b02"),
    ("vit-nano", 40, 0, "4f640b2bde0ce167", "c59a6ec9d069c010"),
    ("vit-nano", 40, 1, "f00c413d12818ad7", "1429e5a3cacf8c5b"),
    ("vit-nano", 80, 0, "5fa86308e4fc574d", "f7b706ad223e2a2d"),
    ("vit-nano", 80, 1, "2eb4ab4ef8ff8e3f", "7c4412568acde19c"),
]
RECORDED_STUDY_HASH = "f138eb721ff95568"


@pytest.fixture
def study(tmp_path: Path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    return load_study(path)


def test_cell_ids_match_the_flat_layout(study) -> None:
    got = []
    for cell in study.cells():
        digests = {n: n.encode().hex().ljust(32, "0")[:32] for n in cell.subsets()}
        got.append(
            (cell.model, cell.iterations, cell.seed, cell_id(cell, digests), config_key(cell))
        )
    assert got == RECORDED
    assert study_hash(study) == RECORDED_STUDY_HASH
