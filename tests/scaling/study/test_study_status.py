"""The status table from the store alone: done, running, waiting, stopped, failed, pending —
by stage (trunks, branches, fine-tunes), and ``--json``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from study_helpers import tiny_tables, write_study

from scaling.cli import main
from scaling.config.identity import cell_digests, study_subsets
from scaling.config.load import load_study
from scaling.study.stages import build_graph
from scaling.study.status import FRESH_S, format_status, study_status, summary
from scaling.study.store import ResultStore

SHARED = {  # multistep with warm-up in steps: lengths share a prefix
    "schedule": "multistep",
    "warmup_fraction": 0.0,
    "warmup_steps": 1,
    "milestones": [0.75],
}


def _graph(study):
    subsets = study_subsets(study)
    pairs = [(c, cell_digests(c, subsets)) for c in study.cells()]
    return build_graph(pairs, share_prefix=study.grid.share_prefix)


@pytest.fixture
def study_and_store(tmp_path: Path, demo_dir: Path):
    path = write_study(
        tmp_path / "s.toml",
        tiny_tables(demo_dir, tmp_path / "out", grid={"iterations": [4, 8, 12, 16, 20]}),
    )
    study = load_study(path)
    graph = _graph(study)
    stages = list(graph.pretrain.values())
    store = ResultStore(study.output_dir)
    done, failed, running, stopped, _pending = stages
    row = {**done.cell.row_fields(), "stage_id": done.stage_id, "status": "complete"}
    store.write_stage_result("pretrain", row | {"val_loss": 0.5}, [])
    store.write_stage_failure(
        "pretrain", failed.stage_id, failed.cell.row_fields(), "CellError: non-finite loss"
    )
    store.write_json(
        f"{running.dir}/progress.json",
        {"phase": "pretrain", "step": 6, "train_loss": 0.9, "val_loss": float("nan")},
    )
    stale = {"phase": "pretrain", "step": 8, "train_loss": 0.8, "val_loss": 0.7}
    store.write_json(f"{stopped.dir}/progress.json", stale)
    old = time.time() - FRESH_S - 60
    os.utime(store.path(f"{stopped.dir}/progress.json"), (old, old))
    return path, store, graph


def test_states_from_the_store(study_and_store) -> None:
    _, store, graph = study_and_store
    ids = [s.stage_id for s in graph.pretrain.values()]
    rows = study_status(store, graph)
    assert [r.state for r in rows] == ["done", "failed", "running", "stopped", "pending"]
    assert {r.role for r in rows} == {"run"}  # a cosine schedule shares no prefix
    assert rows[0].val_loss == 0.5 and rows[3].val_loss == 0.7 and rows[3].step == 8
    assert rows[1].error == "CellError: non-finite loss"
    assert summary(rows) == "5 pretrain stages: 1 done, 1 running, 1 stopped, 1 failed, 1 pending"
    # a live scheduler knows better than file ages
    live = study_status(store, graph, running={ids[3]})
    assert [r.state for r in live] == ["done", "failed", "stopped", "running", "pending"]

    text = format_status(rows)
    assert "error: CellError: non-finite loss" in text
    assert " nan" not in text  # no val loss yet reads "-"
    compact = format_status(rows, compact_over=3)
    assert ids[0] not in compact and ids[4] not in compact
    assert ids[2] in compact and compact.endswith(summary(rows))


def test_status_command(study_and_store, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, graph = study_and_store
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 pretrain stages: 1 done, 1 running, 1 stopped, 1 failed, 1 pending" in out
    assert all(stage_id in out for stage_id in graph.pretrain)
    assert main(["status", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in report["stages"]] == [
        "done", "failed", "running", "stopped", "pending"
    ]  # fmt: skip
    assert len(report["cells"]) == 5 and report["missing_manifests"] == []
    # a study whose manifests are not built yet: cells without stages, said so
    assert main(["status", str(path), "--set", "grid.data=['demo-5pct']"]) == 0
    out = capsys.readouterr().out
    assert "5 cells have no stages yet: missing manifests demo-5pct" in out


def test_trunks_branches_and_finetunes(tmp_path: Path, demo_dir: Path) -> None:
    """A branch waits for its fork checkpoint, a fine-tune for its encoder."""
    tables = tiny_tables(
        demo_dir,
        tmp_path / "out",
        grid={"iterations": [4, 8]},
        pretrain=SHARED,
        finetune={"enabled": True, "image_size": 32, "epochs": 0.1, "batch_size": 8},
    )
    study = load_study(write_study(tmp_path / "s.toml", tables))
    graph = _graph(study)
    store = ResultStore(study.output_dir)
    by_role = {s.role: s for s in graph.pretrain.values()}
    trunk, branch = by_role["trunk"], by_role["branch"]
    assert branch.trunk_id == trunk.stage_id and branch.fork_step == 3  # 0.75 × 4
    assert trunk.forks == ((3, branch.stage_id),)
    states = {r.stage_id: r for r in study_status(store, graph)}
    assert states[trunk.stage_id].state == "pending"
    assert states[branch.stage_id].state == "waiting"
    assert all(states[f].state == "waiting" for f in graph.finetune)
    # the trunk wrote the fork checkpoint: the branch can go
    store.write_bytes(f"{branch.dir}/checkpoint.pt", b"seeded")
    assert {r.stage_id: r.state for r in study_status(store, graph)}[branch.stage_id] == "pending"
    text = format_status(study_status(store, graph))
    assert "branch   swinv2-nano" in text and f"{trunk.stage_id}@3" in text
    assert "2 finetune stages: 2 waiting" in text
