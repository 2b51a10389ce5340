"""The per-GPU memory model: known answers by hand, the paper's big cells, the calibration
reproduced, and the study keys it reads (range-checked, located errors)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from study_helpers import line_of_key, tiny_tables, write_study

from scaling.config.load import load_study
from scaling.config.parse import ConfigError
from scaling.config.schema import (
    CellConfig,
    CellResources,
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
)
from scaling.model import swinv2
from scaling.model.sizes import ModelSpec, get_spec
from scaling.study import memory
from scaling.study.memory import check_memory, estimate, estimate_cell, measure_activation_mib

GIB, MIB = 2**30, 2**20
PAPER_PARAMS_M = {"swinv2-h": 655.2, "swinv2-g": 1061.0}


def _paper_params(model: str, image_size: int) -> float:
    return PAPER_PARAMS_M[model]


def _cell(model: str, workers: int, **pretrain: Any) -> CellConfig:
    """A paper cell: global batch 2048 over ``workers`` ranks, no fine-tuning."""
    parallelism = pretrain.pop("parallelism", "ddp")
    return CellConfig(
        model=model,
        data="in1k-100pct",
        iterations=125_000,
        data_config=DataConfig(manifest_dir="/m", root="/r"),
        pretrain=PretrainConfig(amp="bf16", **pretrain),
        finetune=FinetuneConfig(enabled=False),
        resources=CellResources(gpus=1, workers=workers, parallelism=parallelism),
    )


def test_ddp_estimate_by_hand() -> None:
    est = estimate("swinv2-b", params_m=87.0, batch_per_rank=128, img_size=192)
    assert est.state_gib == pytest.approx(87e6 * 18 / GIB)  # 4 + 4 + 8 + 2 bytes
    per_image_mib = 1.2725 * 128 - 0.55  # swinv2 calibration, paper geometry
    assert est.activation_gib == pytest.approx(per_image_mib * 128 * 1.10 * MIB / GIB)
    assert est.total_gib == pytest.approx(est.state_gib + est.activation_gib + 2.0)
    assert est.fits and est.capacity_gib == 80.0


def test_fsdp_shards_the_state_and_gathers_two_widest_blocks() -> None:
    est = estimate(
        "swinv2-g", params_m=1000.0, batch_per_rank=1, img_size=192, parallelism="fsdp", workers=8
    )
    widest = 12 * 3584**2  # swinv2-g's last stage: 448 × 8 channels
    expected = 1e9 * 16 / 8 + 2 * widest * 8 + 2 * 1e9  # shards + gathered + bf16 copies
    assert est.state_gib == pytest.approx(expected / GIB)


def test_image_size_fp32_and_depth_scale_the_activations() -> None:
    base = memory.activation_mib_per_image(get_spec("vit-b"), 224, "none", "bf16")
    assert base == pytest.approx(0.0824 * 768 + 3.20)
    big = memory.activation_mib_per_image(get_spec("vit-b"), 448, "none", "bf16")
    assert big == pytest.approx(4 * base)
    assert memory.activation_mib_per_image(get_spec("vit-b"), 224, "none", "fp32") == 2 * base
    deep = memory.activation_mib_per_image(get_spec("vit-l"), 224, "none", "bf16")
    assert deep == pytest.approx(0.0824 * 1024 * 24 / 12 + 3.20)  # 24 blocks of 1024


def test_checkpointing_orders_the_activations() -> None:
    spec = get_spec("swinv2-g")
    none, block, stage = (
        memory.activation_mib_per_image(spec, 192, mode, "bf16")
        for mode in ("none", "block", "stage")
    )
    assert block < stage < none


def test_the_papers_giant_at_128_per_gpu_needs_checkpointing_or_more_ranks() -> None:
    """swinv2-g, global batch 2048 on 16 GPUs (128 each): plain DDP does not fit 80 GB."""
    problems = check_memory([_cell("swinv2-g", 16)], _paper_params)
    assert len(problems) == 1
    assert re.search(
        r"^cell swinv2-g × in1k-100pct × 125000 \(seed 0\): needs 9\d\.\d GiB per GPU of 80 "
        r"\(.* swinv2-g pretrain, 128 images per rank, ddp × 16, checkpointing none\); .*"
        r'activation_checkpointing in \[pretrain.models."swinv2-g"\], or parallelism = "fsdp" '
        r'in \[resources.models."swinv2-g"\]',
        problems[0],
    ), problems[0]
    assert (
        check_memory([_cell("swinv2-g", 16, activation_checkpointing="block")], _paper_params) == []
    )
    assert check_memory([_cell("swinv2-g", 32)], _paper_params) == []  # 64 per GPU
    fsdp = estimate_cell(_cell("swinv2-g", 16, parallelism="fsdp"), _paper_params)[0]
    ddp = estimate_cell(_cell("swinv2-g", 16), _paper_params)[0]
    assert fsdp.state_gib < ddp.state_gib / 2 and fsdp.activation_gib == ddp.activation_gib


def test_cpu_cells_are_not_checked_and_the_column_is_the_largest_phase() -> None:
    cell = _cell("swinv2-g", 16)
    cpu = CellConfig(**{**cell.__dict__, "resources": CellResources(workers=16)})
    assert check_memory([cpu], _paper_params) == []
    assert (
        memory.cell_memory_gib(cell, _paper_params)
        == estimate_cell(cell, _paper_params)[0].total_gib
    )
    assert "calibrated on the CPU" in memory.NOTE


def test_fine_tuning_is_checked_too() -> None:
    cell = _cell("swinv2-h", 16, activation_checkpointing="block")
    cell = CellConfig(**{**cell.__dict__, "finetune": FinetuneConfig(batch_size=16384)})
    phases = [e.phase for e in estimate_cell(cell, _paper_params)]
    assert phases == ["pretrain", "finetune"]
    (problem,) = check_memory([cell], _paper_params)
    assert "swinv2-h finetune, 1024 images per rank" in problem


def _small_swinv2(width: int) -> ModelSpec:
    return ModelSpec(
        name=f"probe-{width}",
        family="swinv2",
        embed_dim=width,
        depths=(1, 1, 2, 1),
        num_heads=swinv2.heads(width, 4),
        patch_size=4,
        window_size=6,
        img_size=96,
    )


@pytest.mark.slow
def test_activations_are_linear_in_the_width() -> None:
    """The calibration's premise: at a fixed geometry, MiB per image is a + b × width
    (measured 1.07 / 1.76 / 3.00 MiB: the line through the first two overshoots by 4%)."""
    at = {w: measure_activation_mib(_small_swinv2(w), 96, "none") for w in (16, 32, 64)}
    slope = (at[32] - at[16]) / 16
    assert at[64] == pytest.approx(at[16] + 48 * slope, rel=0.06), at
    assert at[64] > at[32] > at[16]


@pytest.mark.slow
def test_the_swinv2_calibration_is_reproduced() -> None:
    """Re-measures width 32 of the paper geometry (about two minutes on two cores)."""
    spec = ModelSpec(
        name="probe",
        family="swinv2",
        embed_dim=32,
        depths=(2, 2, 18, 2),
        num_heads=swinv2.heads(32, 4),
        patch_size=4,
        window_size=12,
        img_size=192,
    )
    for mode in ("none", "block"):
        expected = memory.activation_mib_per_image(spec, 192, mode, "bf16")
        assert measure_activation_mib(spec, 192, mode) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("resources", "gpu_memory_gb", 0, r"resources\.gpu_memory_gb: must be in \(0, 4096\]"),
        ("resources", "parallelism", "zero3", r"resources\.parallelism: must be one of \('ddp'"),
        (
            "pretrain",
            "activation_checkpointing",
            "layer",
            r"pretrain\.activation_checkpointing: must be one of \('none', 'block', 'stage'\)",
        ),
    ],
)
def test_bad_memory_keys_name_file_line_and_key(
    tmp_path: Path, section: str, key: str, value: Any, message: str
) -> None:
    tables = tiny_tables(tmp_path / "data", tmp_path / "out")
    tables[section] = {**tables.get(section, {}), key: value}
    path = write_study(tmp_path / "study.toml", tables)
    with pytest.raises(ConfigError, match=message) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}:{line_of_key(path, section, key)}: ")


def test_per_model_resources_carry_parallelism() -> None:
    with pytest.raises(ConfigError, match=r"parallelism: must be one of"):
        CellResources(parallelism="deepspeed")
    assert CellResources(parallelism="fsdp", gpu_memory_gb=141).gpu_memory_gb == 141


def test_plan_prints_the_column_and_what_does_not_fit(tmp_path: Path, demo_dir: Path) -> None:
    from scaling.study.plan import format_plan, plan_study

    gpu = tiny_tables(demo_dir, tmp_path / "out", resources={"gpus": 1, "gpu_memory_gb": 1})
    plan = plan_study(load_study(write_study(tmp_path / "gpu.toml", gpu)))
    (cell,) = plan.cells
    assert cell.gpu_memory_gib > 2.0  # the CUDA context alone is 2 GiB
    (problem,) = plan.memory_problems
    assert re.match(
        r"cell swinv2-nano × demo-25pct × 8 \(seed 0\): needs 2\.\d GiB per GPU of 1 ", problem
    )
    text = format_plan(plan)
    assert "mem_gib" in text and "calibrated on the CPU" in text
    assert f"does not fit: {problem}" in text
    assert plan.to_json()["memory"]["problems"] == [problem]

    cpu = plan_study(
        load_study(write_study(tmp_path / "cpu.toml", tiny_tables(demo_dir, tmp_path / "o")))
    )
    assert cpu.cells[0].gpu_memory_gib is None and cpu.memory_problems == ()
