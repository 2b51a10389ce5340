"""The Ray grid on a local Ray instance (real Ray, CPU, real trials of tiny cells).

A stage that raises mid-run is retried from its checkpoint and ends with the metrics of
an uninterrupted run; a finished study grown by one length runs only the new stages;
``mimscale status`` reads the same table from the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from study_helpers import tiny_tables, write_study

from scaling.cli import main
from scaling.config.load import load_study
from scaling.config.schema import StudyConfig
from scaling.study.preflight import prepare_run
from scaling.study.store import ResultStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def data(demo_dir: Path) -> Path:
    return demo_dir  # the session's demo data set (conftest.py)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module; run_grid joins it instead of starting one."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def study_at(tmp_path: Path, data: Path, name: str, **changes: Any) -> tuple[Path, StudyConfig]:
    path = write_study(tmp_path / f"{name}.toml", tiny_tables(data, tmp_path / name, **changes))
    return path, load_study(path)


def run_cells(study: StudyConfig):
    """Prepare and run the study's stages as ``mimscale run`` does (records, job order)."""
    from scaling.study.grid import run_grid
    from scaling.study.preflight import write_study_record
    from scaling.study.verbs import _job_order

    store = ResultStore(study.output_dir)
    run = prepare_run(study, store)
    write_study_record(store, study, run)
    return store, run, run_grid(_job_order(run), store, max_failures=2)


def test_failed_cell_is_retried_from_its_checkpoint(
    tmp_path: Path, data: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"5:{marker}")
    _, faulty = study_at(tmp_path, data, "faulty")
    store, run, result = run_cells(faulty)
    (cell_id,) = run.todo  # one pre-training stage (fine-tuning off)
    assert marker.exists(), "the fault was not injected"
    assert result.completed == [cell_id] and not result.failed
    assert result.retries == {cell_id: 1}

    monkeypatch.delenv("MIMSCALE_FAIL_AT")
    _, clean = study_at(tmp_path, data, "clean")
    clean_store, clean_run, clean_result = run_cells(clean)
    assert clean_run.todo == (cell_id,)  # the same cell, another store
    assert clean_result.completed == [cell_id] and not clean_result.retries

    retried = store.stage_row("pretrain", cell_id)
    straight = clean_store.stage_row("pretrain", cell_id)
    assert retried["status"] == straight["status"] == "complete"
    for key in ("train_loss", "val_loss", "n_train_images", "epochs_seen", "pretrain_flops"):
        assert retried[key] == pytest.approx(straight[key], abs=1e-6), key
    curves = store.stage_curves("pretrain", cell_id).to_pandas()
    clean_curves = clean_store.stage_curves("pretrain", cell_id).to_pandas()
    assert curves[["phase", "step", "split", "metric"]].equals(
        clean_curves[["phase", "step", "split", "metric"]]
    )
    assert curves["value"].to_numpy() == pytest.approx(clean_curves["value"].to_numpy(), abs=1e-6)


def test_growing_a_study_runs_only_new_cells(
    tmp_path: Path, data: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path, study = study_at(tmp_path, data, "grow", grid={"iterations": [6]})
    assert main(["run", str(path), "--no-report", "--progress-interval", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 cells = 1 pre-training + 0 fine-tuning stages, 0 complete, 1 to run" in out
    store = ResultStore(study.output_dir)
    (first,) = store.stage_ids("pretrain")
    row_file = Path(study.output_dir) / "stages" / "pretrain" / first / "result.parquet"
    before = (row_file.stat().st_mtime_ns, row_file.read_bytes())

    # the same study again: nothing to run, Ray not needed
    assert main(["run", str(path), "--no-report"]) == 0
    assert "1 complete, 0 to run" in capsys.readouterr().out

    # grown by one length: only the new stage runs
    grown = write_study(path, tiny_tables(data, tmp_path / "grow", grid={"iterations": [6, 10]}))
    assert main(["run", str(grown), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "2 cells = 2 pre-training + 0 fine-tuning stages, 1 complete, 1 to run" in out
    assert "grid: 1 stages completed, 0 failed" in out
    assert (row_file.stat().st_mtime_ns, row_file.read_bytes()) == before

    cells = store.read_table("cells.parquet").to_pandas()
    assert sorted(cells["iterations"]) == [6, 10]
    assert cells["cell_id"].is_unique and (cells["status"] == "complete").all()
    curves = store.read_table("curves.parquet").to_pandas()
    assert set(curves["cell_id"]) == set(cells["cell_id"])
    record = json.loads((Path(study.output_dir) / "study.json").read_text())
    assert len(record["cells"]) == 2 and len(record["previous_hashes"]) == 1

    # status: the same table from the store, nothing run
    assert main(["status", str(grown)]) == 0
    out = capsys.readouterr().out
    assert "2 pretrain stages: 2 done" in out and first in out
    assert main(["status", str(grown), "--json"]) == 0
    states = json.loads(capsys.readouterr().out)
    assert [c["state"] for c in states["stages"]] == ["done", "done"]
    assert all(c["val_loss"] is not None for c in states["stages"])


def test_multi_worker_cell_runs_ddp_inside_its_trial(
    tmp_path: Path, data: Path, local_ray: None
) -> None:
    # two DDP ranks (gloo, half a CPU each) through Ray Train's TorchTrainer
    _, study = study_at(
        tmp_path, data, "ddp", resources={"cpus": 0.5, "workers": 2, "max_failures": 0}
    )
    store, run, result = run_cells(study)
    (cell_id,) = run.todo
    assert result.completed == [cell_id], result.failed
    row = store.stage_row("pretrain", cell_id)
    assert row["status"] == "complete" and row["n_train_images"] == 383
    assert 0 < row["val_loss"] < 10 and 0 < row["train_loss"] < 10


def test_env_forwarding_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from scaling.study.grid import _set_env

    before = dict(os.environ)
    monkeypatch.setenv("MIMSCALE_OLD", "1")
    _set_env({"MIMSCALE_FAIL_AT": "3:/x"})
    try:
        assert "MIMSCALE_OLD" not in os.environ and os.environ["MIMSCALE_FAIL_AT"] == "3:/x"
    finally:  # _set_env also dropped the session's MIMSCALE_DEVICE: put everything back
        os.environ.clear()
        os.environ.update(before)


def test_concurrency_matches_the_cluster(tmp_path: Path, data: Path) -> None:
    from scaling.config.parse import ConfigError
    from scaling.study.grid import concurrency, placement

    _, study = study_at(tmp_path, data, "res", grid={"models": ["swinv2-nano", "swinv2-micro"]})
    nano, micro = study.cells()
    cluster = {"CPU": 16.0, "GPU": 0.0}
    assert concurrency([nano, micro], cluster) == 16
    assert concurrency([nano], cluster, cap=3) == 3
    assert placement(nano).required_resources == {"CPU": 1.0}

    gpu = dataclasses.replace(nano.resources, cpus=10.0, gpus=1.0, workers=8)
    big = dataclasses.replace(nano, resources=gpu)
    # four 8-GPU nodes: four 8-worker cells at once; their DDP workers get their own
    # placement groups, the trial itself only a sliver of a CPU
    assert concurrency([big], {"CPU": 4 * 96.0, "GPU": 32.0}) == 4
    assert placement(big).required_resources["CPU"] < 0.1
    with pytest.raises(
        ConfigError,
        match=r"resources\.cpus: a swinv2-nano cell needs 80 CPU \(8 workers\) but the Ray "
        r"cluster has 16; lower resources\.cpus or join a larger cluster \(--address\)",
    ):
        concurrency([big], cluster)


def test_a_user_error_fails_the_cell_without_retries(
    tmp_path: Path, data: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # a learning rate that diverges: the trial stops with a CellError, which no retry fixes
    path, study = study_at(
        tmp_path, data, "diverge", pretrain={"base_lr": 1e12, "warmup_fraction": 0.0}
    )
    assert main(["run", str(path), "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "grid: 0 stages completed, 1 failed, 0 retries" in captured.out
    assert re.search(r"error: stage [0-9a-f]{16} failed: CellError: .*non-finite", captured.err)
    cells = ResultStore(study.output_dir).read_table("cells.parquet").to_pandas()
    assert list(cells["status"]) == ["failed"] and "non-finite" in cells["error"][0]


def test_a_manifest_rebuilt_after_planning_refuses_the_stage(tmp_path: Path, data: Path) -> None:
    from scaling.config.parse import ConfigError
    from scaling.study.grid import _check_digests

    _, study = study_at(tmp_path, data, "rebuilt")
    store = ResultStore(study.output_dir)
    (stage,) = prepare_run(study, store).graph.stages()
    job = stage.to_job()
    _check_digests(job, stage.cell, store)  # nothing recorded yet: fine
    store.write_json(f"{stage.dir}/stage.json", stage.record())
    _check_digests(job, stage.cell, store)
    record = stage.record()
    record["identity"]["digests"]["demo-val"] = "0" * 32
    store.write_json(f"{stage.dir}/stage.json", record)
    with pytest.raises(ConfigError, match=r"manifests changed since it was planned: demo-val"):
        _check_digests(job, stage.cell, store)


def test_a_rerun_runs_a_stage_that_failed_before_and_then_its_fine_tune(
    tmp_path: Path, data: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    finetune = {"enabled": True, "image_size": 32, "epochs": 0.05, "batch_size": 8}
    path, study = study_at(tmp_path, data, "rerun", finetune=finetune)
    monkeypatch.setenv("MIMSCALE_NAN_AT", "0:3")  # pre-training fails: a non-finite loss
    assert main(["run", str(path), "--no-report"]) == 1
    assert "grid: 0 stages completed, 2 failed" in capsys.readouterr().out
    monkeypatch.delenv("MIMSCALE_NAN_AT")
    # the earlier failures are not this run's: pre-training runs, then its fine-tune
    assert main(["run", str(path), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "grid: 2 stages completed, 0 failed" in captured.out, captured.out + captured.err
    cells = ResultStore(study.output_dir).read_table("cells.parquet").to_pandas()
    assert list(cells["status"]) == ["complete"] and cells["finetune_top1"].notna().all()
