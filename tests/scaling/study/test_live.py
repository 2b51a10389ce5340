"""Progress that answers "when will it finish": stage speed and ETA in progress.json and
status, study totals (GPU-hours spent vs planned, ETA from measured pace), the live view
on a terminal (redrawn in place) and off one (a line per event)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from scaling.study.live import LiveView, format_totals, study_totals
from scaling.study.status import StageStatus, duration, format_status


def _row(stage_id: str, state: str, **kw) -> StageStatus:
    base = dict(
        stage_id=stage_id,
        kind="pretrain",
        role="run",
        model="swinv2-b",
        data="in1k-10pct",
        iterations=1000,
        seed=0,
        state=state,
        gpus=8.0,
    )
    return StageStatus(**(base | kw))


def test_totals_eta_from_measured_pace() -> None:
    rows = [
        _row("a", "done", wall_s=3600.0, gpu_hours=8.0),  # 3.6 s per step
        _row("b", "running", step=500, wall_s=1800.0, eta_s=1900.0, images_per_s=270.0),
        _row("c", "stopped", step=250, wall_s=1000.0, total_steps=1000),  # own pace: 4 s/step
        _row("d", "pending"),  # the (pretrain, swinv2-b) pace: (3.6 + 3.6 + 4) / 3 s/step
        _row("e", "failed", error="boom"),
        _row("f", "pending", kind="finetune", role="finetune"),  # nothing to go by
    ]
    t = study_totals(rows, planned_gpu_hours=64.0)
    pace = (3600 / 1000 + 1800 / 500 + 1000 / 250) / 3
    assert t.eta_s == pytest.approx(1900.0 + 4.0 * 750 + pace * 1000)  # one running at once
    assert t.unmeasured == 1
    assert t.gpu_hours_spent == pytest.approx(8.0 + (1800.0 + 1000.0) * 8 / 3600)
    assert t.counts == {"done": 1, "running": 1, "stopped": 1, "pending": 2, "failed": 1}
    line = format_totals(t)
    assert line.startswith("6 stages: 1 done, 1 running, 1 stopped, 1 failed, 2 pending")
    assert "GPU-hours 14.2 of 64 planned" in line
    assert f"ETA ≥ {duration(t.eta_s)} (1 stages not measured yet)" in line


def test_totals_before_anything_is_measured_and_when_all_is_done() -> None:
    t = study_totals([_row("a", "pending"), _row("b", "waiting")])
    assert t.eta_s is None and "ETA unknown until a stage has measured its speed" in (
        format_totals(t)
    )
    t = study_totals([_row("a", "done", wall_s=10.0, gpu_hours=0.0)])
    assert t.eta_s == 0.0 and format_totals(t).endswith("ETA 0s")
    two = [_row(i, "running", eta_s=100.0) for i in "ab"]
    assert study_totals(two).eta_s == pytest.approx(100.0)  # two at once


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (float("nan"), "-"), (42, "42s"), (61, "1m"), (3 * 3600 + 300, "3h05"),
     (2 * 86400 + 4 * 3600, "2d04h")],
)  # fmt: skip
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_events_off_a_terminal_one_line_per_event() -> None:
    out = io.StringIO()
    view = LiveView(out, tty=False, planned_gpu_hours=10.0, every_pct=25)
    earlier = _row("old", "done", wall_s=5.0, gpu_hours=0.01, val_loss=0.5)
    frames = [
        [earlier, _row("a", "pending")],
        [earlier, _row("a", "running", step=10, total_steps=1000, eta_s=990.0)],
        [earlier, _row("a", "running", step=20, total_steps=1000, eta_s=980.0)],  # same 0 %
        [earlier, _row("a", "running", step=260, total_steps=1000, eta_s=740.0,
                       images_per_s=512.0)],
        [earlier, _row("a", "running", step=270, total_steps=1000, eta_s=730.0)],  # still 25 %
        [earlier, _row("a", "running", step=1000, total_steps=1000, eta_s=0.0)],  # 75 %: no

        [earlier, _row("a", "done", wall_s=1000.0, val_loss=0.4321, gpu_hours=2.2)],
    ]  # fmt: skip
    for rows in frames:
        view.update(rows)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[0] == "start pretrain a (swinv2-b on in1k-10pct, 1000 steps)"
    assert lines[1] == " 25% pretrain a step 260/1000 · 512 img/s · ETA 12m"
    assert (
        lines[2] == "done pretrain a (swinv2-b on in1k-10pct, 1000 steps): val_loss 0.4321 in 16m"
    )
    assert lines[3].startswith("2 stages: 2 done · GPU-hours 2.21 of 10 planned · ETA 0s")
    assert len(lines) == 4  # nothing for the stage done before this run, nor for small steps


def test_a_stage_waiting_on_data_says_so() -> None:
    out = io.StringIO()
    view = LiveView(out, tty=False, planned_gpu_hours=1.0, every_pct=25)
    view.update([_row("a", "running", step=1), _row("b", "running", step=1)])
    view.update([_row("a", "running", step=300, total_steps=1000, images_per_s=512.0,
                      data_wait=0.42),
                 _row("b", "running", step=300, total_steps=1000, images_per_s=900.0,
                      data_wait=0.05)])  # fmt: skip
    text = out.getvalue()
    assert "pretrain a step 300/1000 · 512 img/s (waiting on data 42%) · ETA" in text
    assert "pretrain b step 300/1000 · 900 img/s · ETA" in text


def test_a_failure_event_names_the_error_and_the_log() -> None:
    out = io.StringIO()
    view = LiveView(out, tty=False)
    view.update([_row("a", "running", step=1)])
    view.update([_row("a", "failed", error="CellError: bad", log="/runs/x/stages/a/log.txt")])
    text = out.getvalue()
    assert "FAILED pretrain a (swinv2-b on in1k-10pct, 1000 steps): CellError: bad" in text
    assert "· log: /runs/x/stages/a/log.txt" in text


def test_on_a_terminal_the_table_is_redrawn_in_place() -> None:
    out = io.StringIO()
    view = LiveView(out, tty=True)
    view.update([_row("a", "running", step=1, eta_s=50.0)])
    first = out.getvalue()
    assert "\x1b[" not in first and first.count("\n") == 5  # head, rule, row, summary, totals
    view.update([_row("a", "running", step=2, eta_s=40.0)])
    second = out.getvalue()[len(first) :]
    assert second.startswith("\x1b[5F\x1b[J")  # up to the first line drawn, clear below
    assert " 40s " in second


@pytest.mark.slow
def test_progress_carries_speed_and_status_shows_it(
    tiny_cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scaling.cell.run import run_stage
    from scaling.config.identity import manifest_digests
    from scaling.study.stages import build_graph
    from scaling.study.status import study_status
    from scaling.study.store import ResultStore

    cell = tiny_cell(iterations=4, pretrain={"log_interval": 1}, finetune={"enabled": False})
    graph = build_graph([(cell, manifest_digests(cell))])
    (stage,) = graph.pretrain.values()
    store = ResultStore(str(tmp_path / "out"))
    monkeypatch.setenv("MIMSCALE_FAIL_AT", f"3:{tmp_path / 'marker'}")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_stage("pretrain", stage.stage_id, cell, store)
    progress = store.read_json(f"{stage.dir}/progress.json")
    assert progress["step"] == 3 and progress["images_per_s"] > 0 and progress["eta_s"] > 0
    assert progress["wall_s"] > 0 and progress["time"] > 0
    (row,) = study_status(store, graph, running=())
    assert row.state == "stopped" and row.images_per_s == progress["images_per_s"]
    assert 0 <= progress["data_wait"] <= 1 and row.data_wait == progress["data_wait"]
    assert row.log == str(tmp_path / "out" / stage.dir / "log.txt")
    (row,) = study_status(store, graph, running=(stage.stage_id,))
    assert row.eta_s == progress["eta_s"]
    store.write_stage_failure("pretrain", stage.stage_id, {}, "RuntimeError: injected")
    text = format_status(study_status(store, graph, running=()))
    assert f"log: {tmp_path / 'out' / stage.dir / 'log.txt'}" in text
    run_stage("pretrain", stage.stage_id, dataclasses.replace(cell), store)
    (row,) = study_status(store, graph, running=())
    assert row.state == "done" and row.wall_s > 0 and row.gpu_hours == 0.0 and row.log is None


def test_status_prints_the_totals_line(demo_dir: Path, tmp_path: Path, capsys) -> None:
    import json

    from study_helpers import tiny_tables, write_study

    from scaling.cli import main

    study = write_study(tmp_path / "s.toml", tiny_tables(demo_dir, tmp_path / "out"))
    assert main(["status", str(study)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "1 stages: 1 pending · GPU-hours 0 · ETA unknown until a stage has measured its speed"
    )
    assert main(["status", str(study), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["eta_s"] is None and totals["unmeasured"] == 1
