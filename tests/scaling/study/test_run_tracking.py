"""``mimscale run`` end to end with trackers and the event view (real Ray, a 2-rank stage):
a line per event when stdout is not a terminal, each stage's log in the store written
from its Ray worker, TensorBoard and MLflow curves from rank 0 of a multi-worker stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import mimscale, tiny_tables, write_study

pytestmark = pytest.mark.slow


def test_run_prints_events_and_tracks_a_two_rank_stage(demo_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tables = tiny_tables(
        demo_dir,
        tmp_path / "out",
        resources={"cpus": 0.5, "workers": 2, "max_failures": 0},
        tracking={"tensorboard": True, "mlflow": ""},
    )
    study = write_study(tmp_path / "study.toml", tables)
    done = mimscale("run", str(study), "--no-report", "--progress-interval", "1", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    (stage,) = [p.name for p in (tmp_path / "out" / "stages" / "pretrain").iterdir()]
    assert f"start pretrain {stage} (swinv2-nano on demo-25pct, 8 steps)" in out
    assert f"done pretrain {stage} (swinv2-nano on demo-25pct, 8 steps): val_loss" in out
    assert "1 stages: 1 done · GPU-hours 0" in out
    assert out.count("train_loss") == 1  # one table, at the end: no table every second
    log = (tmp_path / "out" / "stages" / "pretrain" / stage / "log.txt").read_text()
    assert f"--- stages/pretrain/{stage}, rank 0" in log and f"pretrain stage {stage} done" in log
    (run,) = (tmp_path / "out" / "tracking" / "tensorboard").iterdir()
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 8]
    from mlflow.tracking import MlflowClient  # the store the driver prepared, the stage's run

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/out/tracking/mlflow.db")
    (found,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["mimscale_stage"] == stage
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 8]
