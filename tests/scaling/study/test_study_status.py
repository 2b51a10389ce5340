"""The status table from the store alone: done, running, stopped, failed, pending."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from study_helpers import tiny_tables, write_study

from scaling.cli import main
from scaling.config.identity import cell_id as id_of
from scaling.config.identity import manifest_digests
from scaling.config.load import load_study
from scaling.study.status import FRESH_S, format_status, study_status, summary
from scaling.study.store import ResultStore


@pytest.fixture
def study_and_store(tmp_path: Path, demo_dir: Path):
    data = demo_dir
    path = write_study(
        tmp_path / "s.toml",
        tiny_tables(data, tmp_path / "out", grid={"iterations": [4, 8, 12, 16, 20]}),
    )
    study = load_study(path)
    cells = [(id_of(c, manifest_digests(c)), c) for c in study.cells()]
    store = ResultStore(study.output_dir)
    done, failed, running, stopped, _pending = cells
    store.write_cell_result(
        {**done[1].row_fields(), "cell_id": done[0], "status": "complete", "val_loss": 0.5},
        [],
    )
    store.write_failure(failed[0], failed[1].row_fields(), "CellError: non-finite loss")
    store.write_json(
        f"cells/{running[0]}/progress.json",
        {"phase": "pretrain", "step": 6, "train_loss": 0.9, "val_loss": float("nan")},
    )
    stale = {"phase": "pretrain", "step": 8, "train_loss": 0.8, "val_loss": 0.7}
    store.write_json(f"cells/{stopped[0]}/progress.json", stale)
    old = time.time() - FRESH_S - 60
    os.utime(store.path(f"cells/{stopped[0]}/progress.json"), (old, old))
    return path, store, cells


def test_states_from_the_store(study_and_store) -> None:
    _, store, cells = study_and_store
    rows = study_status(store, cells)
    assert [r.state for r in rows] == ["done", "failed", "running", "stopped", "pending"]
    assert rows[0].val_loss == 0.5 and rows[3].val_loss == 0.7 and rows[3].step == 8
    assert rows[1].error == "CellError: non-finite loss"
    assert summary(rows) == "5 cells: 1 done, 1 running, 1 stopped, 1 failed, 1 pending"
    # a live scheduler knows better than file ages
    live = study_status(store, cells, running={cells[3][0]})
    assert [r.state for r in live] == ["done", "failed", "stopped", "running", "pending"]

    text = format_status(rows)
    assert "error: CellError: non-finite loss" in text
    assert " nan" not in text  # no val loss yet reads "-"
    compact = format_status(rows, compact_over=3)
    assert cells[0][0] not in compact and cells[4][0] not in compact
    assert cells[2][0] in compact and compact.endswith(summary(rows))


def test_status_command(study_and_store, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, cells = study_and_store
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 cells: 1 done, 1 running, 1 stopped, 1 failed, 1 pending" in out
    assert all(cell_id in out for cell_id, _ in cells)
    # a study whose manifests are not built yet: cells without ids, said so
    assert main(["status", str(path), "--set", "grid.data=['demo-10pct']"]) == 0
    out = capsys.readouterr().out
    assert "5 cells have no id yet: missing manifests demo-10pct" in out
