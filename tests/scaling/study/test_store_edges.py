"""A results store whose files are no files: a folder or a symlink loop where a stage's
result, log or checkpoint should be (found by an adversarial pass over the CLI's inputs:
``mimscale status`` and ``logs`` stopped with an ``OSError`` traceback). Such a file is
damaged like any other: named on the log, read as missing, set aside by a writable store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from scaling.config.identity import manifest_digests
from scaling.study.stages import StageGraph, build_graph
from scaling.study.status import study_status
from scaling.study.store import ResultStore

LOGGER = "scaling.study.store"
POINT = {"phase": "pretrain", "step": 1, "split": "val", "metric": "loss", "lr": 0.1}


@pytest.fixture
def graph(tiny_cell) -> StageGraph:
    """One pre-training stage, no fine-tuning."""
    cell = tiny_cell(iterations=4, finetune={"enabled": False})
    return build_graph([(cell, manifest_digests(cell))])


def _not_a_file(path: Path, how: str) -> None:
    path.unlink(missing_ok=True)
    if how == "folder":
        path.mkdir()
    else:
        os.symlink(path.name, path)  # points at itself: ELOOP on open


@pytest.mark.parametrize("how", ["folder", "symlink loop"])
def test_a_result_that_is_no_file_is_read_as_missing_by_status(
    tmp_path: Path, graph: StageGraph, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    (stage,) = graph.pretrain.values()
    store = ResultStore(str(tmp_path))
    row = {**stage.cell.row_fields(), "stage_id": stage.stage_id, "status": "complete"}
    store.write_stage_result("pretrain", row, [{**POINT, "value": 0.5}])
    result = tmp_path / stage.dir / "result.parquet"
    _not_a_file(result, how)
    reader = ResultStore(str(tmp_path), set_aside=False)  # as `mimscale status` opens it
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert [s.state for s in study_status(reader, graph)] == ["pending"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{result}: damaged (not a readable file: ")
    assert warning.endswith("; read as missing")
    assert os.path.lexists(result), "a read-only store moves nothing"


def test_a_folder_where_a_file_should_be_is_set_aside_by_a_writable_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    (tmp_path / "stages" / "pretrain" / "x").mkdir(parents=True)
    log_txt = tmp_path / "stages" / "pretrain" / "x" / "log.txt"
    log_txt.mkdir()
    (log_txt / "kept.txt").write_text("what was in it")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.read_bytes("stages/pretrain/x/log.txt") is None
        assert store.read_bytes("stages/pretrain/x/log.txt") is None  # reported once
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "is a directory" in warning and "set aside as log.txt.damaged-" in warning
    (aside,) = log_txt.parent.glob("log.txt.damaged-*")
    assert (aside / "kept.txt").read_text() == "what was in it" and not log_txt.exists()
