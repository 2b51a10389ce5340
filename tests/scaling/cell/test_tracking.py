"""Trackers of a stage through the real libraries (TensorBoard read back with its own
reader, MLflow's local store, W&B offline), stage logs in the store, speed fields."""

from __future__ import annotations

import dataclasses
import logging
import struct
import sys
import time
from pathlib import Path

import pytest

from scaling.cell.run import run_stage, run_trial
from scaling.cell.stagelog import StageLog
from scaling.cell.tracking import Throughput, TrackingError, WaitedBatches
from scaling.config.identity import manifest_digests, pretrain_id
from scaling.config.schema import TrackingConfig
from scaling.study.store import ResultStore


def _tracked(tiny_cell, out: Path, **tracking):
    cell = tiny_cell(iterations=4, pretrain={"val_interval": 2, "log_interval": 1})
    cfg = TrackingConfig(**tracking).resolved("tracked", str(out))
    return dataclasses.replace(cell, tracking=cfg)


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (W&B's block log of its own protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, records, parts = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:  # block trailer / zero padding
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _wandb_history(path: Path) -> list[dict[str, float]]:
    import json

    rows = []
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            items = r.history.item
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


@pytest.mark.slow
def test_trackers_log_curves_and_final_metrics(tiny_cell, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    cell = _tracked(tiny_cell, out, tensorboard=True, mlflow="", wandb="offline")
    row = run_trial(cell, ResultStore(str(out)))
    pid = row["pretrain_id"]
    # TensorBoard: event files read back with tensorboard's own reader
    runs = {p.name.split("-")[0]: p for p in (out / "tracking" / "tensorboard").iterdir()}
    assert set(runs) == {"pretrain", "finetune"} and runs["pretrain"].name.endswith(pid)
    acc = EventAccumulator(str(runs["pretrain"]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(row["val_loss"], rel=1e-6)
    assert {"lr", "images_per_s", "data_wait", "final/val_loss"} <= set(acc.Tags()["scalars"])
    assert all(e.value > 0 for e in acc.Scalars("images_per_s"))
    ft = EventAccumulator(str(runs["finetune"]))
    ft.Reload()
    assert ft.Scalars("final/finetune_top1")[0].value == pytest.approx(row["finetune_top1"])
    assert "val/top1" in ft.Tags()["scalars"]
    # MLflow: the local store under output_dir, one finished run per stage
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/tracking/mlflow.db")
    exp = client.get_experiment_by_name("tracked")
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.mimscale_stage = '{pid}'")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    history = client.get_metric_history(found[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert found[0].data.params["model"] == "swinv2-nano"
    assert found[0].data.metrics["final/val_loss"] == pytest.approx(row["val_loss"])
    # W&B offline: the run file holds the curves and the final metrics
    (run_file,) = (out / "tracking" / "wandb").glob(f"offline-run-*-{pid}/run-{pid}.wandb")
    history = _wandb_history(run_file)
    assert [h["step"] for h in history if "train/loss" in h][:4] == [1, 2, 3, 4]
    assert [h["step"] for h in history if "val/loss" in h] == [2, 4]
    assert any(h.get("final/val_loss") == pytest.approx(row["val_loss"]) for h in history)


def test_a_missing_library_is_named_before_anything_runs(
    tiny_cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    out = tmp_path / "out"
    cell = _tracked(tiny_cell, out, wandb="offline")
    with pytest.raises(TrackingError, match=r"tracking\.wandb: .*'wandb' package is not inst"):
        run_stage("pretrain", "abc", cell, ResultStore(str(out)))
    assert not out.exists()  # nothing written
    with pytest.raises(TrackingError, match=r"pip install 'mimscale\[tracking\]'"):
        run_trial(cell, ResultStore(str(out)))


def test_stage_log_in_the_store_and_a_crash_traceback(
    tiny_cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = tiny_cell(iterations=4)
    store = ResultStore(str(tmp_path / "out"))
    sid = pretrain_id(cell, manifest_digests(cell))
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"3:{tmp_path / 'marker'}")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_stage("pretrain", sid, cell, store)
    text = (tmp_path / "out" / "stages" / "pretrain" / sid / "log.txt").read_text()
    assert f"--- stages/pretrain/{sid}, rank 0" in text
    assert "Traceback" in text and "injected fault at pre-training step 3" in text
    run_stage("pretrain", sid, cell, store)  # the retry appends its attempt
    text = (tmp_path / "out" / "stages" / "pretrain" / sid / "log.txt").read_text()
    assert text.count(f"--- stages/pretrain/{sid}, rank 0") == 2
    assert f"pretrain stage {sid} done" in text.splitlines()[-1]


def test_other_ranks_upload_their_log_only_on_a_crash(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path / "out"))
    with StageLog(store, "stages/pretrain/s1", rank=1):
        logging.getLogger("scaling.test").info("rank one is fine")
    assert not store.exists("stages/pretrain/s1/log.rank1.txt")
    with pytest.raises(ValueError), StageLog(store, "stages/pretrain/s1", rank=1):
        logging.getLogger("scaling.test").warning("rank one breaks")
        raise ValueError("boom")
    text = store.read_bytes("stages/pretrain/s1/log.rank1.txt").decode()
    assert "rank one breaks" in text and "ValueError: boom" in text
    assert "rank one is fine" not in text  # each attempt's file is its own


def test_remote_store_log_uploads_at_intervals_and_keeps_earlier_attempts() -> None:
    store = ResultStore("mock:///bucket/study")  # pyarrow's in-memory file system
    rel = "stages/pretrain/s2/log.txt"
    with StageLog(store, "stages/pretrain/s2", upload_s=0.05):
        logging.getLogger("scaling.test").info("first line")
        time.sleep(0.1)
        logging.getLogger("scaling.test").info("second line")
        assert b"second line" in store.read_bytes(rel)  # uploaded while running
        logging.getLogger("scaling.test").info("third line")
    with StageLog(store, "stages/pretrain/s2", upload_s=60):
        logging.getLogger("scaling.test").info("next attempt")
    text = store.read_bytes(rel).decode()
    assert text.index("first line") < text.index("third line") < text.index("next attempt")


def test_throughput_images_per_second_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    speed = Throughput(batch_size=32, step=10, iterations=110)
    now[0] += 5.0
    fields = speed.tick(20)  # 10 steps of 32 images in 5 s
    assert fields["images_per_s"] == pytest.approx(64.0)
    assert fields["eta_s"] == pytest.approx(45.0)  # 90 steps left at 2 steps/s
    now[0] += 1.0
    fields = speed.tick(30)
    assert fields["images_per_s"] == pytest.approx(320.0)
    assert fields["eta_s"] == pytest.approx(80 * 6 / 20)
    assert speed.tick(30).keys() == {"time", "eta_s"}  # no step since: no rate


def _share_waiting(produce_s: float, consume_s: float, caplog=None) -> list[float]:
    """data_wait of three log intervals of 4 steps: batches made in ``produce_s`` each,
    trained on in ``consume_s`` each."""

    def slow_batches():
        while True:
            time.sleep(produce_s)
            yield None

    batches = WaitedBatches(slow_batches())
    speed = Throughput(batch_size=8, step=0, iterations=12, batches=batches)
    shares = []
    for step in range(1, 13):
        next(batches)
        time.sleep(consume_s)
        if step % 4 == 0:
            shares.append(speed.tick(step)["data_wait"])
    return shares


def test_data_wait_is_the_share_of_time_spent_waiting_for_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="scaling.cell.tracking"):
        fed = _share_waiting(produce_s=0.0, consume_s=0.02)
    assert all(0 <= w < 0.2 for w in fed), fed
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="scaling.cell.tracking"):
        starved = _share_waiting(produce_s=0.02, consume_s=0.0)
    assert all(0.8 < w <= 1 for w in starved), starved
    # said once a phase, and not for the first interval (it holds the loader's start)
    (record,) = caplog.records
    assert record.getMessage().startswith("steps 4–8 waited on data ")
    assert record.getMessage().endswith(
        "the data loader is the bottleneck (more data.num_workers and resources.cpus; a pack "
        "(`mimscale subsets pack`, with --pixels to decode each image once))"
    )


@pytest.mark.parametrize(
    ("tracking", "match"),
    [
        ({"wandb": "maybe"}, r"tracking\.wandb: must be one of \('off', 'offline', 'online'\)"),
        ({"run_name": "{model}-{lr}"}, r"tracking\.run_name: .*KeyError: 'lr'.*placeholders"),
        ({"log_upload_s": 0}, r"tracking\.log_upload_s: must be in \(0, 86400\], got 0"),
    ],
)
def test_tracking_keys_are_checked_with_file_and_line(
    tmp_path: Path, tracking: dict, match: str
) -> None:
    from study_helpers import tiny_tables, write_study

    from scaling.config.load import load_study
    from scaling.config.parse import ConfigError

    tables = tiny_tables(tmp_path, tmp_path / "o", tracking=tracking)
    with pytest.raises(ConfigError, match=match) as err:
        load_study(write_study(tmp_path / "s.toml", tables))
    assert "s.toml" in str(err.value)


def test_a_local_mlflow_store_needs_a_local_output(tmp_path: Path) -> None:
    from study_helpers import tiny_tables, write_study

    from scaling.config.load import load_study
    from scaling.config.parse import ConfigError

    tables = tiny_tables(tmp_path, "s3://bucket/runs/x", tracking={"mlflow": ""})
    with pytest.raises(ConfigError, match=r"tracking\.mlflow: .*output_dir is s3://bucket"):
        load_study(write_study(tmp_path / "s.toml", tables))
    tables = tiny_tables(tmp_path, tmp_path / "o", tracking={"mlflow": ""})
    (cell, *_) = load_study(write_study(tmp_path / "s.toml", tables)).cells()
    assert cell.tracking.mlflow == f"sqlite:///{tmp_path / 'o'}/tracking/mlflow.db"
    assert cell.tracking.project == "tiny"


def test_a_tracker_that_cannot_start_never_fails_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from scaling.cell.tracking import StageTracker

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: W&B online has no key
    recipe = SimpleNamespace(batch_size=8, base_lr=1e-3, mask_ratio=0.6, schedule="cosine",
                             image_size=32)  # fmt: skip
    cell = SimpleNamespace(model="swinv2-nano", data="d", iterations=2, seed=0, pretrain=recipe)
    cfg = TrackingConfig(wandb="online", tensorboard=True).resolved("p", str(tmp_path))
    tracker = StageTracker(cfg, "pretrain", "s1", cell, local_root=str(tmp_path / "tracking"))
    tracker({"phase": "pretrain", "step": 1, "train_loss": 0.5, "lr": 1e-3})
    tracker.close(True)
    assert list(tracker.backends) == ["tensorboard"]
    assert "tracking.wandb: cannot start (UsageError" in caplog.text
    assert "this stage goes on without it" in caplog.text


@pytest.mark.slow
def test_an_object_store_gets_the_stage_log_and_the_event_files(tiny_cell) -> None:
    import pyarrow.fs as pafs

    store = ResultStore("mock:///bucket/study")  # pyarrow's in-memory file system
    cell = _tracked(tiny_cell, Path("/unused"), tensorboard=True)
    cell = dataclasses.replace(cell, finetune=dataclasses.replace(cell.finetune, enabled=False))
    sid = pretrain_id(cell, manifest_digests(cell))
    run_stage("pretrain", sid, cell, store)
    log = store.read_bytes(f"stages/pretrain/{sid}/log.txt").decode()
    assert f"pretrain stage {sid} done" in log
    found = store.fs.get_file_info(pafs.FileSelector(store.path("tracking"), recursive=True))
    events = [i.path for i in found if "tfevents" in i.base_name]
    assert len(events) == 1 and f"tensorboard/pretrain-swinv2-nano-demo-25pct-4-{sid}/" in events[0]


def test_each_report_becomes_curves_at_their_steps(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scaling.cell.tracking import StageTracker

    recipe = SimpleNamespace(batch_size=8, base_lr=1e-3, mask_ratio=0.6, schedule="cosine",
                             image_size=32)  # fmt: skip
    cell = SimpleNamespace(model="swinv2-nano", data="d", iterations=6, seed=0, pretrain=recipe)
    cfg = TrackingConfig(tensorboard=True, run_name="{stage_id}").resolved("p", str(tmp_path))
    tracker = StageTracker(cfg, "finetune", "s1", cell, local_root=str(tmp_path / "t"))
    reports = [
        {"phase": "finetune", "step": 2, "train_loss": 2.0, "lr": 0.1, "grad_norm": 3.0},
        {"phase": "finetune", "step": 4, "train_loss": 1.5, "finetune_top1": 40.0,
         "finetune_top5": 90.0, "val_step": 3, "val_loss": 0.7},  # val_loss: the encoder's
        {"phase": "finetune", "step": 4, "train_loss": 9.0, "finetune_top1": 40.0,
         "val_step": 3},  # the end of a phase repeats its last log: nothing new
        {"phase": "finetune", "step": 6, "train_loss": float("nan"), "finetune_top1": 50.0,
         "val_step": 6},
    ]  # fmt: skip
    for fields in reports:
        tracker(fields)
    tracker.final({"finetune_top1": 50.0, "wall_s": 1.0, "val_loss": None})
    tracker.close(True)
    acc = EventAccumulator(str(tmp_path / "t" / "tensorboard" / "s1"))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars["train/loss"] == [(2, 2.0), (4, 1.5)]
    assert scalars["train/grad_norm"] == [(2, 3.0)]
    assert scalars["val/top1"] == [(3, 40.0), (6, 50.0)] and scalars["val/top5"] == [(3, 90.0)]
    assert "val/loss" not in scalars  # a fine-tune's progress carries its encoder's val loss
    assert scalars["final/finetune_top1"] == [(6, 50.0)] and "final/val_loss" not in scalars
