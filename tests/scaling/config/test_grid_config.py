"""Ragged grids ([[grid.exclude]], [[grid.cells]]), per-size recipes, warm-up in steps:
what each resolves to, and each mistake located by file, line and dotted key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scaling.config.load import load_study
from scaling.config.parse import ConfigError

HEAD = """
name = "ragged"
output_dir = "out"

[data]
root = "data"
manifest_dir = "data/manifests"
val = "demo-val"
finetune_train = "demo-25pct"
finetune_val = "demo-val"

[pretrain]
batch_size = 8
image_size = 32
mask_patch_size = 8
schedule = "multistep"
warmup_fraction = 0.0
warmup_steps = 2
milestones = [0.75]

[finetune]
image_size = 32
batch_size = 8
"""
PRODUCT = """
[grid]
models = ["swinv2-nano", "swinv2-micro"]
data = ["demo-25pct", "demo-50pct"]
iterations = [8, 16]
"""


def _load(tmp_path: Path, text: str, overrides: list[str] | None = None):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study(path, overrides)


def _error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, overrides)
    assert info.value.exit_code == 2
    return str(info.value)


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_exclusions_leave_out_matching_points(tmp_path: Path) -> None:
    text = (
        HEAD
        + PRODUCT
        + """
[[grid.exclude]]
model = "swinv2-micro"
data = "demo-25pct"

[[grid.exclude]]
iterations = 16
data = "demo-50pct"
"""
    )
    cells = _load(tmp_path, text).cells()
    points = [(c.model, c.data, c.iterations) for c in cells]
    assert points == [
        ("swinv2-nano", "demo-25pct", 8),
        ("swinv2-nano", "demo-25pct", 16),
        ("swinv2-nano", "demo-50pct", 8),
        ("swinv2-micro", "demo-50pct", 8),
    ]


def test_an_explicit_cell_list(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[grid.cells]]
model = "swinv2-micro"
data = "demo-50pct"
iterations = 16

[[grid.cells]]
model = "swinv2-nano"
data = "demo-25pct"
iterations = 8
"""
    )
    cells = _load(tmp_path, text).cells()
    assert [(c.model, c.data, c.iterations) for c in cells] == [
        ("swinv2-micro", "demo-50pct", 16),
        ("swinv2-nano", "demo-25pct", 8),
    ]


@pytest.mark.parametrize(
    ("extra", "needle", "message"),
    [
        ('\n[[grid.exclude]]\nmodel = "swinv2-xl"\n', 'model = "swinv2-xl"',
         r"grid\.exclude\[0\]\.model: unknown model 'swinv2-xl'; valid: swinv2-nano"),
        ("\n[[grid.exclude]]\n", "[[grid.exclude]]",
         r"grid\.exclude\[0\]: an exclude entry must name at least one of model, data, "
         r"iterations"),
        ('\n[[grid.exclude]]\nmodel = "swinv2-nano"\n\n[[grid.exclude]]\nmodel = "swinv2-micro"\n',
         "[[grid.exclude]]", r"grid\.exclude: leaves no cell in the grid"),
        ('\n[[grid.cells]]\nmodel = "swinv2-nano"\ndata = "demo-25pct"\niterations = 8\n',
         "models = ", r"grid\.models: give either grid\.cells or the grid\.models × data × "
         r"iterations product"),
    ],
)  # fmt: skip
def test_ragged_grid_mistakes_are_located(
    tmp_path: Path, extra: str, needle: str, message: str
) -> None:
    text = HEAD + PRODUCT + extra
    err = _error(tmp_path, text)
    assert re.search(message, err), err
    assert f"study.toml:{_line(text, needle)}:" in err, err


def test_duplicate_explicit_cells(tmp_path: Path) -> None:
    cell = '\n[[grid.cells]]\nmodel = "swinv2-nano"\ndata = "demo-25pct"\niterations = 8\n'
    err = _error(tmp_path, HEAD + cell + cell)
    assert "grid.cells: lists ('swinv2-nano', 'demo-25pct', 8) twice" in err


def test_per_size_recipes_override_and_shape_the_cells(tmp_path: Path) -> None:
    text = (
        HEAD
        + PRODUCT
        + """
[pretrain.models."swinv2-micro"]
drop_path = 0.3

[finetune.models."swinv2-micro"]
layer_decay = 0.65
"""
    )
    study = _load(tmp_path, text)
    by_model = {c.model: c for c in study.cells()}
    assert by_model["swinv2-nano"].pretrain.drop_path == 0.1
    assert by_model["swinv2-micro"].pretrain.drop_path == 0.3
    assert by_model["swinv2-micro"].finetune.layer_decay == 0.65
    assert by_model["swinv2-nano"].finetune.layer_decay == 0.75
    assert by_model["swinv2-micro"].pretrain.models == {}  # resolved: nothing left to apply


@pytest.mark.parametrize(
    ("extra", "needle", "message"),
    [
        ('\n[finetune.models."swinv2-micro"]\nlayer_decay = 1.5\n', "layer_decay = 1.5",
         r"finetune\.models\.swinv2-micro\.layer_decay: must be in \(0, 1\], got 1\.5"),
        ('\n[pretrain.models."swinv2-micro"]\ndrop_paths = 0.2\n', "drop_paths",
         r"pretrain\.models\.swinv2-micro\.drop_paths: unknown key \(did you mean "
         r"'drop_path'\?\)"),
        ('\n[pretrain.models."swinv2-xl"]\ndrop_path = 0.2\n', '[pretrain.models."swinv2-xl"]',
         r"pretrain\.models\.swinv2-xl: unknown model 'swinv2-xl'"),
        ('\n[pretrain.models."swinv2-micro"]\nimage_size = 48\n', "image_size = 48",
         r"pretrain\.image_size: 48 is not divisible by swinv2-micro's encoder stride 32"),
    ],
)  # fmt: skip
def test_per_size_recipe_mistakes_are_located(
    tmp_path: Path, extra: str, needle: str, message: str
) -> None:
    text = HEAD + PRODUCT + extra
    err = _error(tmp_path, text)
    assert re.search(message, err), err
    if "image_size = 48" not in extra:  # that one is blamed on the study's own key
        assert f"study.toml:{_line(text, needle)}:" in err, err


def test_warmup_in_steps_or_as_a_fraction(tmp_path: Path) -> None:
    study = _load(tmp_path, HEAD + PRODUCT)
    assert {c.pretrain.warmup_for(c.iterations) for c in study.cells()} == {2}
    text = HEAD + PRODUCT
    err = _error(tmp_path, text, ["pretrain.warmup_fraction=0.1"])
    assert err.endswith(
        f"study.toml:{_line(text, 'warmup_steps = 2')}: pretrain.warmup_steps: set one of "
        "warmup_steps (2) and warmup_fraction (0.1); the other must be 0"
    ), err
    err = _error(tmp_path, text, ["pretrain.warmup_steps=7"])
    assert err.endswith(
        f"study.toml:{_line(text, 'milestones = ')}: pretrain.milestones: the first milestone "
        "(step 6) falls inside the warm-up (7 steps) for grid.iterations[0] = 8"
    ), err


TARGETS = """
[[finetune.targets]]
name = "small"
train = "demo-25pct"
val = "demo-val"

[[finetune.targets]]
name = "half"
train = "demo-50pct"
val = "demo-val"

[finetune.targets.recipe]
layer_decay = 0.6
"""


def test_finetune_targets_multiply_the_cells_not_the_pretraining(tmp_path: Path) -> None:
    from scaling.config.identity import finetune_id, pretrain_id

    study = _load(tmp_path, HEAD + PRODUCT + TARGETS)
    cells = study.cells()
    assert len(cells) == 16  # 8 grid points × 2 targets
    by_target = {t: [c for c in cells if c.target == t] for t in ("small", "half")}
    half = by_target["half"][0]
    assert half.data_config.finetune_train == "demo-50pct" and half.finetune.layer_decay == 0.6
    assert by_target["small"][0].finetune.layer_decay == 0.75
    assert half.row_fields()["target"] == "half"
    digests = {n: "0" * 32 for c in cells for n in c.subsets()}
    small = by_target["small"][0]
    assert pretrain_id(small, digests) == pretrain_id(half, digests)  # one encoder
    assert finetune_id(small, digests) != finetune_id(half, digests)  # two fine-tunes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("layer_decay = 0.6", "layer_decay = 1.6"),
         r"finetune\.targets\[1\]\.recipe\.layer_decay: must be in \(0, 1\], got 1\.6"),
        (('name = "half"', 'name = "small"'), r"finetune\.targets: two targets are named 'small'"),
        (('name = "half"', 'name = "a b"'), r"finetune\.targets\[1\]\.name: must be letters"),
        (("layer_decay = 0.6", "models = {}"),
         r"finetune\.targets\[1\]\.recipe\.models: cannot be set per target"),
    ],
)  # fmt: skip
def test_finetune_target_mistakes_are_located(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = HEAD + PRODUCT + TARGETS.replace(*change)
    err = _error(tmp_path, text)
    assert re.search(message, err), err
    assert re.search(r"study\.toml:\d+: ", err), err
