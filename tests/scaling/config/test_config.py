"""Study and cell configs: loading, overrides, every error path with its located message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from study_helpers import line_of_key, study_text, tiny_tables, write_study

from scaling.config.identity import (
    cell_id,
    finetune_id,
    pretrain_id,
    pretrain_identity,
    stage_key,
    study_hash,
)
from scaling.config.load import dump_toml, load_cell, load_study
from scaling.config.parse import ConfigError, to_dict
from scaling.config.schema import CellConfig, StudyConfig


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Any]:
    return tiny_tables(tmp_path / "data", tmp_path / "out")


def load(tmp_path: Path, tables: dict[str, Any], overrides: list[str] | None = None):
    return load_study(write_study(tmp_path / "study.toml", tables), overrides)


def error_of(tmp_path: Path, tables: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, tables, overrides)
    assert info.value.exit_code == 2
    return str(info.value)


def test_valid_study_loads_with_absolute_paths(tmp_path: Path, tables: dict[str, Any]) -> None:
    tables["output_dir"] = "relative/out"
    study = load(tmp_path, tables)
    assert isinstance(study, StudyConfig)
    assert Path(study.output_dir).is_absolute()
    assert Path(study.data.root).is_absolute()
    assert study.source == str((tmp_path / "study.toml").resolve())
    assert study.grid.iterations == (8,)


@pytest.mark.parametrize("packed", ["./packs//in1k/", "s3://bucket/in1k-pack"])
def test_a_pack_path_is_made_absolute_as_the_data_root(
    tmp_path: Path, tables: dict[str, Any], monkeypatch: pytest.MonkeyPatch, packed: str
) -> None:
    """Ray runs trials in directories of their own: a relative pack path must not reach them."""
    monkeypatch.chdir(tmp_path)
    tables["data"] = {**tables["data"], "packed": packed}
    study = load(tmp_path, tables)
    local = "://" not in packed
    assert study.data.packed == (str(tmp_path.resolve() / "packs/in1k") if local else packed)


def test_cells_are_the_product_in_a_stable_order(tmp_path: Path, tables: dict[str, Any]) -> None:
    tables["grid"] = {
        "models": ["swinv2-nano", "swinv2-micro"],
        "data": ["demo-25pct", "demo-50pct"],
        "iterations": [4, 8, 16],
        "seeds": [0, 1],
        "mask_ratios": [0.4, 0.6],
    }
    cells = load(tmp_path, tables).cells()
    assert len(cells) == 2 * 2 * 3 * 2 * 2
    assert (cells[0].model, cells[0].data, cells[0].iterations) == ("swinv2-nano", "demo-25pct", 4)
    assert cells[0].seed == 0 and cells[0].pretrain.mask_ratio == 0.4
    assert cells[1].pretrain.mask_ratio == 0.6
    assert cells[-1].model == "swinv2-micro" and cells[-1].iterations == 16


def test_overrides_set_nested_values(tmp_path: Path, tables: dict[str, Any]) -> None:
    study = load(
        tmp_path,
        tables,
        ["pretrain.batch_size=16", "grid.iterations=[4, 12]", 'data.val="demo-50pct"'],
    )
    assert study.pretrain.batch_size == 16
    assert study.grid.iterations == (4, 12)
    assert study.data.val == "demo-50pct"


def test_per_model_resources(tmp_path: Path, tables: dict[str, Any]) -> None:
    path = write_study(tmp_path / "study.toml", tables)
    text = path.read_text() + '\n[resources.models."swinv2-nano"]\ncpus = 2\nworkers = 2\n'
    path.write_text(text)
    study = load_study(path)
    assert study.cells()[0].resources.workers == 2
    assert study.resources.for_model("swinv2-micro").workers == 1
    # a field the per-model table does not give is the study's (e.g. gpu_memory_gb)
    wide = load_study(path, ["resources.gpu_memory_gb=141", "resources.parallelism='fsdp'"])
    nano = wide.resources.for_model("swinv2-nano")
    assert (nano.workers, nano.gpu_memory_gb, nano.parallelism) == (2, 141.0, "fsdp")
    path.write_text(text + "gpus = -1\n")
    with pytest.raises(ConfigError, match=r"resources\.models\.swinv2-nano\.gpus: must be >= 0"):
        load_study(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "pretrain",
            "mask_rato",
            0.5,
            r"pretrain\.mask_rato: unknown key \(did you mean 'mask_ratio'\?\)",
        ),
        ("pretrain", "batch_size", "big", r"pretrain\.batch_size: expected int, got 'big'"),
        ("pretrain", "batch_size", True, r"pretrain\.batch_size: expected int, got True"),
        ("pretrain", "betas", [0.9, 0.99, 0.5], r"pretrain\.betas: expected a list of 2 values"),
        ("pretrain", "mask_ratio", 1.5, r"pretrain\.mask_ratio: must be in \(0, 1\), got 1\.5"),
        ("pretrain", "batch_size", 0, r"pretrain\.batch_size: must be > 0, got 0"),
        ("pretrain", "accum_steps", 3, r"pretrain\.accum_steps: must divide batch_size 8, got 3"),
        ("pretrain", "amp", "fp8", r"pretrain\.amp: must be one of .*got 'fp8'"),
        (
            "pretrain",
            "schedule",
            "linear",
            r"pretrain\.schedule: unknown schedule 'linear'; valid: cosine, multistep, wsd",
        ),
        ("pretrain", "warmup_fraction", 1.0, r"pretrain\.warmup_fraction: must be in \[0, 1\)"),
        (
            "pretrain",
            "mask_patch_size",
            12,
            r"pretrain\.mask_patch_size: must divide image_size 32, got 12",
        ),
        ("pretrain", "drop_path", 1.0, r"pretrain\.drop_path: must be in \[0, 1\)"),
        ("finetune", "layer_decay", 0.0, r"finetune\.layer_decay: must be in \(0, 1\]"),
        (
            "finetune",
            "warmup_fraction",
            1.0,
            r"finetune\.warmup_fraction: must be in \[0, 1\), got 1\.0",
        ),
        ("finetune", "accum_steps", 0, r"finetune\.accum_steps: must be > 0, got 0"),
        ("finetune", "epochs", -1, r"finetune\.epochs: must be > 0"),
        (
            "grid",
            "iterations",
            [],
            r"grid\.iterations: is missing or empty: give grid\.models, grid\.data and grid",
        ),
        ("grid", "models", [], r"grid\.models: is missing or empty"),
        ("grid", "data", ["a", "a"], r"grid\.data: has duplicates"),
        ("grid", "iterations", [8, -1], r"grid\.iterations\[1\]: must be > 0, got -1"),
        ("grid", "mask_ratios", [0.5, 1.0], r"grid\.mask_ratios\[1\]: must be in \(0, 1\)"),
        (
            "grid",
            "models",
            ["swinv2-nano", "swinv2-xl"],
            r"grid\.models\[1\]: unknown model 'swinv2-xl'; valid: .*swinv2-b",
        ),
        ("grid", "models", "swinv2-nano", r"grid\.models: expected a list"),
        ("data", "num_workers", -1, r"data\.num_workers: must be in \[0, 256\]"),
        ("data", "num_workers", 10**6, r"data\.num_workers: must be in \[0, 256\].*1000000"),
        ("pretrain", "base_lr", float("nan"), r"pretrain\.base_lr: must be a finite number"),
        ("pretrain", "base_lr", float("inf"), r"pretrain\.base_lr: must be a finite number"),
        ("finetune", "epochs", float("inf"), r"finetune\.epochs: must be a finite number"),
        ("resources", "cpus", float("-inf"), r"resources\.cpus: must be a finite number"),
        ("pretrain", "warmup_lr", -1e-6, r"pretrain\.warmup_lr: must be >= 0, got -1e-06"),
        ("pretrain", "min_lr", -1, r"pretrain\.min_lr: must be >= 0"),
        ("pretrain", "weight_decay", -0.05, r"pretrain\.weight_decay: must be >= 0"),
        ("pretrain", "gamma", 0.0, r"pretrain\.gamma: must be in \(0, 1\], got 0\.0"),
        ("pretrain", "decay_fraction", -1, r"pretrain\.decay_fraction: must be in \(0, 1\]"),
        (
            "pretrain",
            "norm_target_window",
            48,
            r"pretrain\.norm_target_window: must be an odd number of pixels >= 1, got 48",
        ),
        ("pretrain", "val_limit", -1, r"pretrain\.val_limit: must be >= 0 \(0: every image\)"),
        (
            "pretrain",
            "checkpoint_interval",
            -5,
            r"pretrain\.checkpoint_interval: must be >= 0 \(0: none but the final one\)",
        ),
        ("pretrain", "log_interval", 0, r"pretrain\.log_interval: must be > 0, got 0"),
        ("pretrain", "image_size", 10**5, r"pretrain\.image_size: must be in \[1, 4096\]"),
        ("pretrain", "clip_grad", -1, r"pretrain\.clip_grad: must be >= 0 \(0: no clipping\)"),
        ("finetune", "base_lr", 0, r"finetune\.base_lr: must be > 0, got 0"),
        ("finetune", "warmup_lr", -1, r"finetune\.warmup_lr: must be >= 0"),
        ("finetune", "drop_path", -0.1, r"finetune\.drop_path: must be in \[0, 1\)"),
        ("finetune", "mixup", -0.8, r"finetune\.mixup: must be >= 0 \(0: off\)"),
        ("finetune", "cutmix", -1, r"finetune\.cutmix: must be >= 0 \(0: off\)"),
        ("finetune", "clip_grad", -5, r"finetune\.clip_grad: must be >= 0"),
        ("finetune", "eval_interval", -1, r"finetune\.eval_interval: must be >= 0"),
        ("finetune", "image_size", 0, r"finetune\.image_size: must be in \[1, 4096\] pixels"),
        ("resources", "max_concurrent", -1, r"resources\.max_concurrent: must be >= 0"),
        ("data", "roots", "x", r"data\.roots: unknown key \(did you mean 'root'\?\)"),
        ("resources", "workers", 0, r"resources\.workers: must be >= 1"),
        ("resources", "gpus", -1, r"resources\.gpus: must be >= 0"),
        ("resources", "max_failures", -1, r"resources\.max_failures: must be >= 0"),
    ],
)
def test_bad_values_name_file_line_and_key(
    tmp_path: Path, tables: dict[str, Any], section: str, key: str, value: Any, message: str
) -> None:
    tables[section] = {**tables[section], key: value}
    err = error_of(tmp_path, tables)
    assert re.search(message, err), err
    path = tmp_path / "study.toml"
    assert err.startswith(f"{path}:{line_of_key(path, section, key)}: "), err


def test_pretrain_schedule_is_checked_at_every_grid_length(
    tmp_path: Path, tables: dict[str, Any]
) -> None:
    tables["pretrain"] = {
        **tables["pretrain"],
        "schedule": "multistep",
        "warmup_fraction": 0.12,
        "milestones": [0.1],
    }
    # 8 iterations round both the warm-up and the milestone to step 1: valid
    assert load(tmp_path, tables).cells()[0].iterations == 8
    tables["grid"] = {**tables["grid"], "iterations": [8, 100]}
    err = error_of(tmp_path, tables)
    path = tmp_path / "study.toml"
    line = line_of_key(path, "pretrain", "milestones")
    assert err == (
        f"{path}:{line}: pretrain.milestones: the first milestone (step 10) falls inside the "
        "warm-up (12 steps) for grid.iterations[1] = 100"
    ), err
    # a length given with --set: the message names it, the line stays on the milestones
    tables["grid"] = {**tables["grid"], "iterations": [8]}
    err = error_of(tmp_path, tables, ["grid.iterations=[8, 16, 200]"])
    assert err == (
        f"{path}:{line}: pretrain.milestones: the first milestone (step 20) falls inside the "
        "warm-up (24 steps) for grid.iterations[2] = 200"
    ), err


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        (
            {"schedule": "multistep", "milestones": [0.5, 0.3]},
            "milestones",
            "pretrain.milestones: must be increasing fractions in (0, 1], got [0.5, 0.3]",
        ),
        (
            {"schedule": "multistep", "milestones": [0.5, 1.5]},
            "milestones",
            "pretrain.milestones: must be increasing fractions in (0, 1], got [0.5, 1.5]",
        ),
        (
            {"schedule": "wsd", "decay_fraction": 0.0},
            "decay_fraction",
            "pretrain.decay_fraction: must be in (0, 1], got 0.0",
        ),
    ],
)
def test_schedule_fractions_are_checked_once_not_per_length(
    tmp_path: Path, tables: dict[str, Any], changes: dict[str, Any], key: str, message: str
) -> None:
    tables["pretrain"] = {**tables["pretrain"], **changes}
    tables["grid"] = {**tables["grid"], "iterations": [8, 16]}
    err = error_of(tmp_path, tables)
    path = tmp_path / "study.toml"
    assert err == f"{path}:{line_of_key(path, 'pretrain', key)}: {message}", err


def test_cell_file_schedule_is_checked_at_its_length(
    tmp_path: Path, tables: dict[str, Any]
) -> None:
    cell = to_dict(load(tmp_path, tables).cells()[0])
    cell["pretrain"].update(schedule="multistep", warmup_fraction=0.5, milestones=[0.1])
    path = tmp_path / "cell.toml"
    path.write_text(dump_toml(cell))
    with pytest.raises(ConfigError) as info:
        load_cell(path)
    line = line_of_key(path, "pretrain", "milestones")
    assert str(info.value) == (
        f"{path}:{line}: pretrain.milestones: the first milestone (step 1) falls inside the "
        "warm-up (4 steps) for iterations = 8"
    )
    cell["pretrain"]["milestones"] = [0.5]
    cell["iterations"] = 0
    path.write_text(dump_toml(cell))
    with pytest.raises(ConfigError, match=r"cell\.toml:\d+: iterations: must be > 0, got 0$"):
        load_cell(path)


def test_unknown_top_level_key_and_table(tmp_path: Path, tables: dict[str, Any]) -> None:
    tables["outptu_dir"] = "x"
    assert re.search(
        r"outptu_dir: unknown key \(did you mean 'output_dir'\?\)", error_of(tmp_path, tables)
    )
    del tables["outptu_dir"]
    tables["pretrian"] = {"batch_size": 8}
    assert re.search(
        r"pretrian: unknown key \(did you mean 'pretrain'\?\)", error_of(tmp_path, tables)
    )


def test_missing_required_key(tmp_path: Path, tables: dict[str, Any]) -> None:
    del tables["output_dir"]
    assert re.search(
        r"study\.toml: output_dir: required key is missing", error_of(tmp_path, tables)
    )
    tables["output_dir"] = str(tmp_path / "o")
    del tables["grid"]["iterations"]
    message = r"grid\.iterations: is missing or empty: give .* or grid\.cells"
    assert re.search(message, error_of(tmp_path, tables))


def test_model_must_fit_the_image_size(tmp_path: Path, tables: dict[str, Any]) -> None:
    tables["pretrain"] = {**tables["pretrain"], "image_size": 48, "mask_patch_size": 8}
    err = error_of(tmp_path, tables)
    assert re.search(
        r"pretrain\.image_size: 48 is not divisible by swinv2-nano's encoder stride 32 "
        r"\(.*\(grid\.models\[0\] = 'swinv2-nano'\)",
        err,
    ), err
    assert re.match(rf"{re.escape(str(tmp_path / 'study.toml'))}:\d+: ", err)


def test_finetune_window_must_scale(tmp_path: Path, tables: dict[str, Any]) -> None:
    tables["finetune"] = {"enabled": True, "image_size": 36}
    err = error_of(tmp_path, tables)
    assert re.search(r"finetune\.image_size: 36 does not scale swinv2-nano's window 4", err), err


def test_resources_for_an_unknown_model(tmp_path: Path, tables: dict[str, Any]) -> None:
    path = write_study(tmp_path / "study.toml", tables)
    path.write_text(path.read_text() + '\n[resources.models."swinv2-bb"]\ngpus = 1\n')
    with pytest.raises(
        ConfigError,
        match=r"study\.toml:\d+: resources\.models\.swinv2-bb: unknown model 'swinv2-bb'; valid:",
    ):
        load_study(path)
    # a size outside the grid is fine (grids shrink with --set)
    path.write_text(path.read_text().replace("swinv2-bb", "swinv2-b"))
    assert load_study(path).resources.for_model("swinv2-b").gpus == 1


def test_override_errors_are_marked(tmp_path: Path, tables: dict[str, Any]) -> None:
    err = error_of(tmp_path, tables, ["pretrain.batch_size=0"])
    line = line_of_key(tmp_path / "study.toml", "pretrain", "batch_size")
    assert f"study.toml:{line} (--set): pretrain.batch_size: must be > 0, got 0" in err, err
    # a key the file does not have: no line to point at
    err = error_of(tmp_path, tables, ["pretrain.mask_ratio=2"])
    assert "study.toml (--set): pretrain.mask_ratio: must be in (0, 1), got 2.0" in err, err
    with pytest.raises(ConfigError, match=r"--set: expected KEY=VALUE, got 'pretrain'"):
        load(tmp_path, tables, ["pretrain"])
    with pytest.raises(ConfigError, match=r"--set: not a dotted key: 'a b'"):
        load(tmp_path, tables, ["a b=1"])
    with pytest.raises(
        ConfigError, match=r"pretrain\.batch_size\.x: cannot set a key inside a non-table"
    ):
        load(tmp_path, tables, ["pretrain.batch_size.x=1"])


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file: .*nope\.toml"):
        load_study(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_study(bad)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "x"\n# r\u00e9sum\u00e9\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml:2: not UTF-8 text \(byte 0xe9\)"):
        load_study(latin1)
    with pytest.raises(ConfigError, match=r"cannot read .*: Is a directory"):
        load_study(tmp_path)


def test_stage_ids_are_stable_and_depend_on_what_determines_them(
    tmp_path: Path, tables: dict[str, Any]
) -> None:
    cell = load(tmp_path, tables).cells()[0]
    digests = {"demo-25pct": "a" * 32, "demo-val": "b" * 32}
    first_pre, first_ft = pretrain_id(cell, digests), finetune_id(cell, digests)
    assert re.fullmatch(r"[0-9a-f]{16}", first_pre) and first_pre != first_ft
    assert cell_id(cell, digests) == (first_ft if cell.finetune.enabled else first_pre)
    # same config loaded again (other output dir, other resources, other intervals): same ids
    again = load(
        tmp_path,
        tables,
        ["output_dir='elsewhere'", "resources.cpus=2", "pretrain.val_interval=2"],
    ).cells()[0]
    assert (pretrain_id(again, digests), finetune_id(again, digests)) == (first_pre, first_ft)
    assert pretrain_id(cell, {**digests, "demo-val": "c" * 32}) != first_pre
    # a pre-training change moves both stages; a fine-tuning change only the fine-tune
    other = load(tmp_path, tables, ["pretrain.base_lr=0.02"]).cells()[0]
    assert pretrain_id(other, digests) != first_pre and finetune_id(other, digests) != first_ft
    tuned = load(tmp_path, tables, ["finetune.layer_decay=0.7"]).cells()[0]
    assert pretrain_id(tuned, digests) == first_pre and finetune_id(tuned, digests) != first_ft
    # the key ignores digests: the same stage across manifest rebuilds
    key = stage_key(pretrain_identity(cell, digests))
    assert key == stage_key(pretrain_identity(cell, {n: "d" * 32 for n in digests}))
    assert key != stage_key(pretrain_identity(other, digests))


def test_study_hash_ignores_where_it_was_loaded_from(
    tmp_path: Path, tables: dict[str, Any]
) -> None:
    a = load(tmp_path, tables)
    (tmp_path / "other").mkdir()
    b = load_study(write_study(tmp_path / "other" / "copy.toml", tables))
    assert study_hash(a) == study_hash(b)
    assert study_hash(a) != study_hash(load(tmp_path, tables, ["grid.iterations=[9]"]))


def test_cell_file_round_trips(tmp_path: Path, tables: dict[str, Any]) -> None:
    cell = load(tmp_path, tables).cells()[0]
    path = tmp_path / "cell.toml"
    path.write_text(dump_toml(to_dict(cell)))
    back = load_cell(path)
    assert isinstance(back, CellConfig)
    assert back == cell
    with pytest.raises(
        ConfigError, match=r"cell\.toml:\d+ \(--set\): pretrain\.batch_size: must be > 0"
    ):
        load_cell(path, ["pretrain.batch_size=0"])


def test_study_text_helper_is_valid_toml(tables: dict[str, Any]) -> None:
    import tomllib

    assert tomllib.loads(study_text(tables))["grid"]["iterations"] == [8]
