"""``mimscale plan``: every cell with params, images, epochs, FLOPs, GPU-hours; no Ray, no GPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import REPO, tiny_tables, write_study

from scaling.cli import main
from scaling.config.identity import KNOWN_IMAGES, estimate_images, manifest_digests
from scaling.config.identity import cell_id as id_of
from scaling.config.load import load_study
from scaling.study.plan import format_plan, plan_study

PAPER = REPO / "studies" / "paper.toml"


@pytest.fixture(scope="module")
def paper_plan():
    return plan_study(load_study(PAPER))


def test_paper_study_lists_the_63_released_cells(paper_plan) -> None:
    cells = paper_plan.cells
    assert len(cells) == 63 and paper_plan.excluded == 12
    assert {c.model for c in cells} == {f"swinv2-{s}" for s in "sblhg"}
    assert {c.data for c in cells} == {
        "in1k-10pct",
        "in1k-20pct",
        "in1k-50pct",
        "in1k-100pct",
        "in22k",
    }
    assert {c.iterations for c in cells} == {125_000, 250_000, 500_000}
    assert len({(c.model, c.data, c.iterations) for c in cells}) == 63
    assert all(c.batch_size == 2048 for c in cells)
    # the cells MODELHUB.md does not list: S on IN-22K, H on 10%, g on 10% and 20%
    points = {(c.model, c.data) for c in cells}
    for left_out in [("swinv2-s", "in22k"), ("swinv2-h", "in1k-10pct"),
                     ("swinv2-g", "in1k-10pct"), ("swinv2-g", "in1k-20pct")]:  # fmt: skip
        assert left_out not in points
    by_model = {m: sum(c.model == m for c in cells) for m in {c.model for c in cells}}
    assert by_model == {"swinv2-s": 12, "swinv2-b": 15, "swinv2-l": 15, "swinv2-h": 12,
                        "swinv2-g": 9}  # fmt: skip


def test_paper_plan_shares_prefixes(paper_plan) -> None:
    """Absolute warm-up and a ×0.1 decay at 7/8: one 500K trunk per (model, data), 125K and
    250K branching at 109,375 and 218,750 — 0.625× the pre-training iterations."""
    assert len(paper_plan.sharing) == 21
    for row in paper_plan.sharing:
        assert row.lengths == (125_000, 250_000, 500_000)
        assert row.forks == (109_375, 218_750, 0)
        assert (row.iterations, row.shared_iterations) == (875_000, 546_875)
    total = paper_plan.sharing_total()
    assert total["ratio"] == 0.625
    assert total["shared_gpu_hours"] == pytest.approx(0.625 * paper_plan.total_gpu_hours)
    text = format_plan(paper_plan)
    assert "18,375,000 iterations without sharing, 11,484,375 with (0.625×)" in text


def test_per_length_warmup_shares_nothing() -> None:
    """A warm-up that is a fraction of the length makes the runs differ from step 1."""
    study = load_study(PAPER, ["pretrain.warmup_steps=0", "pretrain.warmup_fraction=0.0125"])
    total = plan_study(study).sharing_total()
    assert total["ratio"] == 1.0
    off = plan_study(load_study(PAPER, ["grid.share_prefix=false"]))
    assert off.sharing_total()["ratio"] == 1.0 and not off.share_prefix
    assert "prefix sharing: off" in format_plan(off)


def test_paper_plan_derived_quantities(paper_plan) -> None:
    by = {(c.model, c.data, c.iterations): c for c in paper_plan.cells}
    # the paper's backbone sizes
    for model, params in [("swinv2-s", 49.0), ("swinv2-b", 86.9), ("swinv2-g", 1061.0)]:
        assert by[(model, "in1k-100pct", 125_000)].params_m == pytest.approx(params, rel=0.005)
    full = by[("swinv2-b", "in1k-100pct", 500_000)]
    by_s = {(c.model, c.data, c.iterations): c for c in paper_plan.cells}
    assert ("swinv2-s", "in22k", 125_000) not in by_s
    assert full.images == 1_281_167 and not full.images_exact
    assert full.cell_id is None  # no manifests here: pending
    assert full.epochs == pytest.approx(500_000 * 2048 / 1_281_167)  # ≈ 800 epochs
    tenth = by[("swinv2-b", "in1k-10pct", 500_000)]
    assert tenth.epochs == pytest.approx(full.epochs * 10, rel=1e-4)
    # FLOPs scale with iterations and grow with the model; GPU-hours follow the stated MFU
    s, b = by[("swinv2-s", "in1k-50pct", 125_000)], by[("swinv2-b", "in1k-50pct", 125_000)]
    twice = by[("swinv2-s", "in1k-50pct", 250_000)].pretrain_flops
    assert twice == pytest.approx(2 * s.pretrain_flops)
    assert b.pretrain_flops > s.pretrain_flops
    assert s.gpu_hours == pytest.approx(s.pretrain_flops / (0.4 * 989e12) / 3600)
    # SwinV2-S at 192 px: about 13 GFLOPs forward, ×3 with the backward
    assert 25e9 < s.pretrain_flops / (2048 * 125_000) < 60e9
    assert paper_plan.total_flops == pytest.approx(sum(c.pretrain_flops for c in paper_plan.cells))
    text = format_plan(paper_plan)
    assert "63 cells = 5 models × 5 data × 3 iterations, less 12 excluded" in text
    assert "40% MFU of 989 TFLOP/s" in text
    assert text.count("pending-manifest") >= 63


def test_estimates_of_standard_subsets() -> None:
    assert estimate_images("in1k-100pct") == KNOWN_IMAGES["in1k-100pct"] == 1_281_167
    assert estimate_images("in1k-10pct") == 128_117
    assert estimate_images("in1k-12.5pct") == round(1_281_167 * 0.125)
    assert estimate_images("in1k-val") == 50_000
    assert estimate_images("places-10pct") is None
    assert estimate_images("something") is None


def test_plan_json_and_mfu_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PAPER), "--json", "--mfu", "0.5", "--peak-tflops", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["cells"] == 63 == len(out["cells"])
    assert out["sharing"]["total"]["ratio"] == 0.625 and out["sharing"]["enabled"]
    assert out["assumption"]["mfu"] == 0.5 and out["assumption"]["peak_tflops"] == 1000
    cell = out["cells"][0]
    assert set(cell) >= {"cell_id", "model", "params_m", "data", "images", "iterations"}
    assert cell["gpu_hours"] == pytest.approx(cell["pretrain_flops"] / 0.5e15 / 3600)
    assert out["total"]["gpu_hours"] == pytest.approx(sum(c["gpu_hours"] for c in out["cells"]))


def test_plan_overrides_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PAPER), "--json", "--set", "grid.iterations=[10000]"]) == 0
    assert len(json.loads(capsys.readouterr().out)["cells"]) == 21  # 25, less 4 excluded
    assert main(["plan", str(PAPER), "--mfu", "1.5"]) == 2
    assert "error: --mfu must be in (0, 1]" in capsys.readouterr().err
    assert main(["plan", str(PAPER), "--set", "pretrain.mask_ratio=1.5"]) == 2
    err = capsys.readouterr().err
    assert "paper.toml:" in err and "pretrain.mask_ratio: must be in (0, 1), got 1.5" in err


def test_plan_with_manifests_gives_ids_and_exact_counts(tmp_path: Path, demo_dir: Path) -> None:
    data = demo_dir
    study = load_study(
        write_study(
            tmp_path / "s.toml",
            tiny_tables(
                data,
                tmp_path / "out",
                grid={"data": ["demo-25pct", "demo-100pct"], "iterations": [8, 16]},
            ),
        )
    )
    plan = plan_study(study)
    assert len(plan.cells) == 4
    for planned, cell in zip(plan.cells, study.cells(), strict=True):
        assert planned.images_exact
        # the same id as `mimscale trial` computes for the cell
        assert planned.cell_id == id_of(cell, manifest_digests(cell))
    small, full = plan.cells[0], plan.cells[2]
    assert full.images == 1527 and small.images < full.images
    assert small.epochs == pytest.approx(8 * 8 / small.images)
    assert not (tmp_path / "out").exists()  # plan writes nothing


def test_plan_imports_neither_ray_nor_cuda() -> None:
    code = (
        "import sys; from scaling.cli import main; "
        f"rc = main(['plan', {str(PAPER)!r}, '--set', 'grid.models=[\"swinv2-s\"]']); "
        "assert rc == 0; assert 'ray' not in sys.modules, 'ray imported'; "
        "import torch; assert not torch.cuda.is_initialized()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "12 cells" in proc.stdout  # S on IN-22K is excluded


def test_flops_and_params_are_cached_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scaling.model.build
    import scaling.model.flops
    from scaling.study import plan

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    direct = scaling.model.flops.pretrain_flops_per_image(
        "swinv2-nano", img_size=32, mask_patch_size=8
    )
    assert plan._flops_per_image("swinv2-nano", 32, 8) == direct
    assert plan._params_m("swinv2-nano", 32) == scaling.model.build.count_params_m(
        "swinv2-nano", 32
    )
    assert (tmp_path / "cache" / "mimscale" / "plan-cache.json").is_file()

    def boom(*args: object, **kwargs: object) -> float:
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(scaling.model.flops, "pretrain_flops_per_image", boom)
    monkeypatch.setattr(scaling.model.build, "count_params_m", boom)
    assert plan._flops_per_image("swinv2-nano", 32, 8) == direct
    assert plan._params_m("swinv2-nano", 32) > 1.0
    with pytest.raises(AssertionError, match="recomputed"):
        plan._flops_per_image("swinv2-nano", 64, 8)  # another size: not cached


def test_plan_refuses_cells_that_do_not_fit_the_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    """Without the per-size activation checkpointing of studies/paper.toml, SwinV2-L and -H
    cannot fine-tune at their batch per GPU in 80 GB: plan prints the plan, then exits 2."""
    assert main(["plan", str(PAPER), "--set", "pretrain.models={}"]) == 2
    captured = capsys.readouterr()
    assert "does not fit: cell swinv2-l × in1k-10pct × 125000" in captured.out
    assert re.search(
        r"error: .*paper\.toml: resources\.gpu_memory_gb: 27 cells cannot fit the GPU memory; "
        r"first: cell swinv2-l × in1k-10pct × 125000 \(seed 0\): needs \d+\.\d GiB per GPU of 80",
        captured.err,
    ), captured.err
    assert main(["plan", str(PAPER)]) == 0  # as shipped, every cell fits
    assert main(["plan", str(PAPER), "--set", "pretrain.models={}",
                 "--set", "resources.gpu_memory_gb=141"]) == 0  # fmt: skip
