"""Cells over 2 ranks on a local Ray instance (real Ray Train, gloo): a user error on one
rank fails the stage at once (no retries), and an FSDP2 cell that crashes mid-run resumes
from its sharded checkpoint (written asynchronously) to the losses of an uninterrupted run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from study_helpers import tiny_tables, write_study

from scaling.cli import main
from scaling.study.store import ResultStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TWO_RANKS = {"cpus": 0.5, "workers": 2, "max_failures": 2}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module; ``mimscale run`` joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _study(tmp_path: Path, data: Path, name: str, **changes: Any) -> Path:
    return write_study(tmp_path / f"{name}.toml", tiny_tables(data, tmp_path / name, **changes))


def test_a_non_finite_loss_on_rank_1_fails_the_stage_without_retries(
    tmp_path: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("MIMSCALE_NAN_AT", "1:3")  # rank 1's third training forward
    path = _study(tmp_path, demo_dir, "nan", resources=TWO_RANKS)
    assert main(["run", str(path), "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "grid: 0 stages completed, 1 failed, 0 retries" in captured.out, captured.out
    # rank 1's NaN reaches rank 0 through the gradient all-reduce: each rank says its own
    assert re.search(r"error: stage [0-9a-f]{16} failed: .*rank 1: .*non-finite", captured.err)
    store = ResultStore(str(tmp_path / "nan"))
    cells = store.read_table("cells.parquet").to_pandas()
    assert list(cells["status"]) == ["failed"] and "rank 1" in cells["error"][0]


def _curve(out: Path) -> list[float]:
    curves = ResultStore(str(out)).read_table("curves.parquet").to_pandas()
    train = curves[(curves["phase"] == "pretrain") & (curves["split"] == "train")]
    return list(train.sort_values("step")["value"])


def test_fsdp_cell_crashes_and_resumes_from_its_shards_exactly(
    tmp_path: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsdp = {**TWO_RANKS, "parallelism": "fsdp"}
    recipe = {"drop_path": 0.2, "activation_checkpointing": "block"}
    plain = _study(tmp_path, demo_dir, "plain", resources=fsdp, pretrain=recipe)
    assert main(["run", str(plain), "--no-report"]) == 0
    marker = tmp_path / "crashed"
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"5:{marker}")  # after the step-4 checkpoint
    crashed = _study(tmp_path, demo_dir, "crash", resources=fsdp, pretrain=recipe)
    assert main(["run", str(crashed), "--no-report"]) == 0
    assert marker.exists()
    shards = sorted(p.name for p in (tmp_path / "crash").rglob("*.distcp"))
    assert shards and {"__0_0.distcp", "__1_0.distcp"} <= set(shards)
    assert _curve(tmp_path / "crash") == _curve(tmp_path / "plain")
    # the shards were written in the background (resources.async_checkpoint, the default)
    # and named by rank 0 once durable
    (log,) = (tmp_path / "crash").rglob("stages/pretrain/*/log.txt")
    named = r"checkpoint \S+/checkpoint\.pt names \S+/checkpoint\.shards/[012]\n"
    assert re.search(named, log.read_text()), log.read_text()
    # the final encoder is one file of whole tensors, as from one rank
    import torch

    (result,) = (tmp_path / "crash").rglob("stages/pretrain/*/checkpoint.pt")
    encoder = torch.load(result, weights_only=False)["state"]["encoder"]
    assert type(encoder["patch_embed.proj.weight"]) is torch.Tensor
    assert encoder["patch_embed.proj.weight"].shape == (32, 3, 4, 4)  # swinv2-nano, whole
