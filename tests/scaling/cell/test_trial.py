"""One cell end to end on the demo data, exact resume, accumulation, failures."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaling.cell.context import CellError, pick_device
from scaling.cell.run import run_trial
from scaling.config.identity import cell_id as id_of
from scaling.config.identity import manifest_digests
from scaling.config.load import dump_toml
from scaling.config.parse import to_dict
from scaling.model.simmim import build_simmim
from scaling.study.store import ResultStore
from scaling.train.loop import accumulate, make_scaler, optimizer_step


def _run(cell, tmp_path: Path, name: str = "store") -> tuple[dict, ResultStore, str]:
    store = ResultStore(str(tmp_path / name))
    cell_id = id_of(cell, manifest_digests(cell))
    return run_trial(cell, store), store, cell_id


def _curves(store: ResultStore, row: dict):
    """The cell's curves: its pre-training stage's, then its fine-tuning stage's."""
    import pandas as pd

    parts = [store.stage_curves("pretrain", row["pretrain_id"]).to_pandas()]
    if row.get("finetune_id"):
        parts.append(store.stage_curves("finetune", row["finetune_id"]).to_pandas())
    return pd.concat(parts, ignore_index=True)


def test_one_cell_end_to_end(tiny_cell, tmp_path: Path) -> None:
    cell = tiny_cell(iterations=6)
    row, store, cell_id = _run(cell, tmp_path)
    assert row["status"] == "complete"
    assert row["cell_id"] == cell_id and row["model"] == "swinv2-nano"
    assert row["n_train_images"] > 0 and row["iterations"] == 6
    assert row["epochs_seen"] == pytest.approx(6 * 16 / row["n_train_images"])
    for key in ("train_loss", "val_loss", "finetune_top1", "finetune_top5", "pretrain_flops"):
        assert math.isfinite(row[key]), key
    assert 0 <= row["finetune_top1"] <= row["finetune_top5"] <= 100
    assert row["params_m"] > 0 and row["wall_s"] > 0
    # the row and curves in the store; the val curve has the interval points and the end
    assert store.stage_complete("pretrain", row["pretrain_id"])
    assert store.stage_complete("finetune", row["finetune_id"])
    curves = _curves(store, row)
    val = curves[(curves.phase == "pretrain") & (curves.split == "val")]
    assert val.step.tolist() == [3, 6]
    assert val.value.iloc[-1] == pytest.approx(row["val_loss"])
    assert set(curves.phase) == {"pretrain", "finetune"}
    assert {"top1", "top5"} <= set(curves[curves.phase == "finetune"].metric)
    assert store.exists(f"stages/pretrain/{row['pretrain_id']}/stage.toml")


def test_resume_after_crash_is_exact(tiny_cell, tmp_path: Path, monkeypatch) -> None:
    """8 steps straight == 4 steps, checkpoint, crash at 6, resume from 4 (drop path on)."""
    cell = tiny_cell(
        iterations=8,
        pretrain={"checkpoint_interval": 4, "drop_path": 0.2, "val_interval": 2},
        finetune={"enabled": False},
    )
    straight, _, _ = _run(cell, tmp_path, "straight")
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"6:{marker}")
    with pytest.raises(RuntimeError, match="injected fault at pre-training step 6"):
        _run(cell, tmp_path, "crashed")
    assert marker.exists()
    resumed, store, _ = _run(cell, tmp_path, "crashed")
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-6)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)
    curve = _curves(store, resumed)
    assert curve.groupby(["phase", "step", "split", "metric"]).size().max() == 1


def test_rerun_of_complete_cell_via_cli_does_nothing(tiny_cell, tmp_path: Path) -> None:
    cell = tiny_cell(iterations=2, finetune={"enabled": False})
    cell_file = tmp_path / "cell.toml"
    cell_file.write_text(dump_toml(to_dict(cell)))
    cmd = [sys.executable, "-m", "scaling", "trial", str(cell_file), "-o", str(tmp_path / "s")]
    first = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "val_loss" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert second.returncode == 0 and "is complete" in second.stdout


def test_nonfinite_loss_stops_the_cell(tiny_cell, tmp_path: Path) -> None:
    cell = tiny_cell(iterations=6, pretrain={"base_lr": 1e36}, finetune={"enabled": False})
    with pytest.raises(CellError, match="non-finite pre-training loss"):
        _run(cell, tmp_path)


def test_nonfinite_loss_is_caught_before_any_checkpoint(tiny_cell, tmp_path: Path) -> None:
    """Losses are read in windows, but every checkpoint reads them first: none holds NaNs."""
    cell = tiny_cell(
        iterations=8,
        pretrain={"base_lr": 1e36, "log_interval": 100, "checkpoint_interval": 2},
        finetune={"enabled": False},
    )
    with pytest.raises(CellError, match=r"non-finite pre-training loss \S+ at step 1 "):
        _run(cell, tmp_path)
    assert not list(tmp_path.rglob("checkpoint.pt")), "a checkpoint was written after NaNs"


def test_nonfinite_finetune_loss_stops_the_cell(tiny_cell, tmp_path: Path) -> None:
    cell = tiny_cell(iterations=2, finetune={"base_lr": 1e36})
    with pytest.raises(CellError, match=r"non-finite fine-tuning loss .*finetune\.base_lr"):
        _run(cell, tmp_path)


def test_finetune_resume_after_crash_is_exact(tiny_cell, tmp_path: Path, monkeypatch) -> None:
    """Fine-tuning (Mixup/CutMix, drop path) crashed at 5 and resumed from 4 == straight."""
    cell = tiny_cell(
        iterations=2,
        pretrain={"checkpoint_interval": 2},
        finetune={"epochs": 0.4, "drop_path": 0.1, "eval_interval": 3},
    )
    straight, store, _ = _run(cell, tmp_path, "straight")
    curves = _curves(store, straight)
    finetune_steps = curves[curves.phase == "finetune"].step.max()
    assert finetune_steps >= 6, "the cell must fine-tune past the crash"
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"finetune@5:{marker}")
    with pytest.raises(RuntimeError, match="injected fault at fine-tuning step 5"):
        _run(cell, tmp_path, "crashed")
    resumed, store2, _ = _run(cell, tmp_path, "crashed")
    resumed_curves = _curves(store2, resumed)
    keys = ["phase", "step", "split", "metric"]
    assert not resumed_curves.duplicated(keys).any()
    merged = curves.merge(resumed_curves, on=keys, suffixes=("", "_resumed"), validate="1:1")
    assert len(merged) == len(curves) == len(resumed_curves)
    assert merged.value_resumed.to_numpy() == pytest.approx(merged.value.to_numpy(), abs=1e-6)
    assert (resumed["finetune_top1"], resumed["finetune_top5"]) == (
        straight["finetune_top1"],
        straight["finetune_top5"],
    )


@pytest.mark.slow
def test_compiled_cell_matches_eager_and_resumes_without_compile(
    tiny_cell, tmp_path: Path, monkeypatch
) -> None:
    """pretrain.compile = true (inductor, here on the CPU) gives the eager losses, and its
    checkpoints hold plain weights (no ``_orig_mod.``), so an eager run resumes them."""
    common = {"val_interval": 2, "checkpoint_interval": 2, "drop_path": 0.1}
    eager = tiny_cell(iterations=4, pretrain=common, finetune={"enabled": False})
    compiled = dataclasses.replace(
        eager, pretrain=dataclasses.replace(eager.pretrain, compile=True)
    )
    assert id_of(compiled, {}) == id_of(eager, {}), "compile is not part of the cell's id"
    straight, _, _ = _run(eager, tmp_path, "eager")
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"3:{tmp_path / 'failed-once'}")
    with pytest.raises(RuntimeError, match="injected fault at pre-training step 3"):
        _run(compiled, tmp_path, "mixed")
    resumed, store, _ = _run(eager, tmp_path, "mixed")
    curves = _curves(store, resumed)
    first_val = curves[(curves.split == "val") & (curves.step == 2)].value.item()
    eager_curves = _curves(ResultStore(str(tmp_path / "eager")), straight)
    eager_val = eager_curves.query("split == 'val' and step == 2").value.item()
    assert first_val == pytest.approx(eager_val, abs=1e-5), "compiled steps 0-2 differ"
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-5)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tpu9", r"MIMSCALE_DEVICE: 'tpu9' is not a torch device"),
        pytest.param(
            "cuda",
            r"MIMSCALE_DEVICE: 'cuda', but this machine has no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"),
        ),
    ],
)
def test_a_bad_forced_device_is_named(value: str, message: str, monkeypatch) -> None:
    monkeypatch.setenv("MIMSCALE_DEVICE", value)
    with pytest.raises(CellError, match=message):
        pick_device()


def test_the_forced_device_wins(monkeypatch) -> None:
    monkeypatch.setenv("MIMSCALE_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device(torch.device("meta")) == torch.device("cpu"), "over an assigned one"
    monkeypatch.delenv("MIMSCALE_DEVICE")
    assert pick_device(torch.device("meta")) == torch.device("meta")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_cell_on_cuda_bf16_channels_last_resumes(
    tiny_cell, tmp_path: Path, monkeypatch
) -> None:
    """A tiny cell (pre-train + fine-tune) on the GPU with amp auto (bf16) and channels-last;
    a crash at step 5 resumes from step 4 to about the same losses (GPU kernels are not
    bitwise deterministic, so the tolerance is loose)."""
    monkeypatch.setenv("MIMSCALE_DEVICE", "cuda")  # over the CPU that conftest.py pins
    cell = tiny_cell(iterations=8, pretrain={"checkpoint_interval": 4, "val_interval": 4})
    assert cell.pretrain.amp == "auto" and cell.pretrain.channels_last
    store = ResultStore(str(tmp_path / "straight"))
    straight = run_trial(cell, store)
    assert math.isfinite(straight["val_loss"]) and math.isfinite(straight["finetune_top1"])
    assert straight["gpu_hours"] == 0.0  # resources.gpus = 0 in the tiny cell
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"5:{tmp_path / 'failed-once'}")
    crashed = ResultStore(str(tmp_path / "crashed"))
    with pytest.raises(RuntimeError, match="injected fault at pre-training step 5"):
        run_trial(cell, crashed)
    resumed = run_trial(cell, crashed)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=2e-2)


def test_missing_manifest_is_a_located_error(tiny_cell, tmp_path: Path) -> None:
    cell = tiny_cell(data="demo-5pct")
    with pytest.raises(Exception, match=r"data.manifest_dir: missing manifests: demo-5pct"):
        manifest_digests(cell)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_accumulation_amp_and_clipping_together(dtype: torch.dtype) -> None:
    """2 micro-batches == 1 full batch under AMP with active clipping; the norm is unscaled."""
    torch.manual_seed(0)
    reference = build_simmim("swinv2-nano", img_size=32)
    images = torch.randn(8, 3, 32, 32)
    masks = (torch.rand(8, 8, 8) > 0.4).to(torch.uint8)
    cpu = torch.device("cpu")
    results = {}
    for accum in (1, 2):
        model = build_simmim("swinv2-nano", img_size=32)
        model.load_state_dict(reference.state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = make_scaler(cpu, dtype)
        for _ in range(3):
            size = 8 // accum
            micro = iter(
                [(images[i * size : (i + 1) * size], masks[i * size : (i + 1) * size])
                 for i in range(accum)]
            )  # fmt: skip
            loss = float(accumulate(model, micro, accum, lambda m, b: m(*b), scaler, cpu, dtype))
            norm = float(optimizer_step(model, optimizer, scaler, clip_grad=0.01))
        results[accum] = (loss, norm, dataclasses.replace)
        assert 0.01 < norm < 10, "grad norm must be measured on unscaled gradients"
    assert results[2][0] == pytest.approx(results[1][0], abs=2e-3)
    assert results[2][1] == pytest.approx(results[1][1], rel=0.1)


def test_a_cell_reads_packed_data(tiny_cell, demo_dir: Path, tmp_path: Path) -> None:
    """data.packed: both stages read the images from the pack's shards (its own epoch order,
    so another stage id), with the same images and counts as from the files."""
    from scaling.cli import main

    manifests = demo_dir / "manifests"
    names = ["demo-100pct", "demo-25pct", "demo-val"]
    pack = tmp_path / "pack"
    argv = ["subsets", "pack", *(str(manifests / f"{n}.parquet") for n in names)]
    assert main([*argv, "--root", str(demo_dir), "--out", str(pack), "--shard-size", "2M"]) == 0
    files = tiny_cell(iterations=4)
    packed = dataclasses.replace(
        files, data_config=dataclasses.replace(files.data_config, packed=str(pack))
    )
    row, store, _ = _run(packed, tmp_path, "packed")
    plain, _, _ = _run(files, tmp_path, "files")
    assert row["status"] == "complete" and row["pretrain_id"] != plain["pretrain_id"]
    assert row["n_train_images"] == plain["n_train_images"] and row["bad_images"] == 0
    for key in ("train_loss", "val_loss", "finetune_top1"):
        assert math.isfinite(row[key]), key
    # the validation curve at its interval and the end, read through the pack too
    assert _curves(store, row).query("split == 'val' and phase == 'pretrain'").step.tolist() == [
        3,
        4,
    ]


def test_a_stage_resumes_only_from_a_pack_with_its_blocks(
    tiny_cell, demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a pack lives is not part of a stage's id, but its blocks order the epochs: a
    checkpoint written reading one pack resumes on a pack of the same blocks (its pixel
    pack too), and is refused on another, which would change the sample order."""
    from scaling.cell.run import run_stage
    from scaling.study.stages import build_graph
    from subsets.pack import PackConfig, pack_manifests

    manifests = tuple(sorted((demo_dir / "manifests").glob("*.parquet")))
    packs = {}
    for name, kw in {"a": {}, "pixels": {"pixels": True}, "other": {"block_rows": 7}}.items():
        packs[name] = tmp_path / name
        pack_manifests(PackConfig(manifests=manifests, root=demo_dir, out_dir=packs[name],
                                  block_bytes=16_000, **kw))  # fmt: skip
    base = tiny_cell(iterations=4, pretrain={"checkpoint_interval": 2}, finetune={"enabled": False})

    def reading(pack: Path):
        return dataclasses.replace(
            base, data_config=dataclasses.replace(base.data_config, packed=str(pack))
        )

    (stage,) = build_graph([(reading(packs["a"]), manifest_digests(base))]).pretrain.values()
    store = ResultStore(str(tmp_path / "out"))
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"3:{tmp_path / 'marker'}")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_stage("pretrain", stage.stage_id, reading(packs["a"]), store)
    with pytest.raises(CellError) as refused:
        run_stage("pretrain", stage.stage_id, reading(packs["other"]), store)
    assert (
        f"stage {stage.stage_id}: its checkpoint was written reading a pack with other blocks "
        f"than {packs['other']} (order "
    ) in str(refused.value)
    assert "resuming would change its sample order" in str(refused.value)
    assert not store.stage_complete("pretrain", stage.stage_id)
    run_stage("pretrain", stage.stage_id, reading(packs["pixels"]), store)  # the same blocks
    assert store.stage_complete("pretrain", stage.stage_id)


def test_bad_validation_images_are_counted(tiny_cell, demo_dir: Path, tmp_path: Path) -> None:
    """A zero-byte validation image is replaced (as in training) and counted separately."""
    import shutil

    import pyarrow.parquet as pq

    root = tmp_path / "demo"
    shutil.copytree(demo_dir, root)
    val = pq.read_table(root / "manifests" / "demo-val.parquet").to_pydict()
    first = min(range(len(val["key"])), key=val["key"].__getitem__)  # val_limit keeps the
    (root / val["path"][first]).write_bytes(b"")  # smallest keys
    cell = tiny_cell(iterations=2, finetune={"enabled": False})
    cell = dataclasses.replace(
        cell,
        data_config=dataclasses.replace(
            cell.data_config, root=str(root), manifest_dir=str(root / "manifests")
        ),
    )
    row, store, _ = _run(cell, tmp_path)
    stage = store.stage_row("pretrain", row["pretrain_id"])
    assert stage["bad_val_images"] == 1 and stage["bad_images"] == 0
