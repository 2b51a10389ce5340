"""Damaged files in a study's store: reported with their path, read as missing, set aside.

Issue 15 item 3. Each damage a disk, a copy or a hand can do to a stage's files
(truncated, empty, flipped bytes, garbage, another encoding) is injected into a real
store of a real stage graph; the store must not raise, must name the file on the log,
must treat the file as missing (its stage incomplete, its cell out of the tables), and
must keep the damaged bytes beside it; a read-only store (``status``) only reports.
Checkpoints fall back to the previous one, then to a fresh start. Writes are fsync'ed
before their rename.
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from scaling.cell.context import TrialContext, load_checkpoint, previous_name
from scaling.config.identity import manifest_digests
from scaling.study.stages import Stage, StageGraph, build_graph
from scaling.study.status import study_status
from scaling.study.store import OutputError, ResultStore
from scaling.study.tables import PRETRAIN_COLUMNS, table_of, write_tables

POINT = {"phase": "pretrain", "step": 1, "split": "val", "metric": "loss", "lr": 0.1}
LOGGER = "scaling.study.store"


def _flip(data: bytes, seed: int) -> bytes:
    rng, out = random.Random(seed), bytearray(data)
    for at in rng.sample(range(len(out)), 3):
        out[at] ^= 0xFF
    return bytes(out)


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: os.urandom(len(data)),
    "latin-1 text": lambda data: "pâté, not a table".encode("latin-1"),
    **{f"flipped-{seed}": (lambda data, s=seed: _flip(data, s)) for seed in range(6)},
}


@pytest.fixture
def graph(tiny_cell) -> StageGraph:
    """Two cells, no fine-tuning: a branch (6 steps) of a trunk (8 steps, the default
    multistep schedule shares its warm-up and first milestone)."""
    cells = [tiny_cell(iterations=n, finetune={"enabled": False}) for n in (6, 8)]
    return build_graph([(c, manifest_digests(c)) for c in cells])


def _complete(store: ResultStore, stage: Stage, **fields: float) -> None:
    """A complete result of ``stage`` with one curve point, as a trial writes it."""
    row = {**stage.cell.row_fields(), "stage_id": stage.stage_id, "status": "complete"}
    store.write_stage_result(stage.kind, {**row, **fields}, [{**POINT, "value": 0.5}])
    assert store.stage_complete(stage.kind, stage.stage_id)


def _damage(path: Path, damage: str) -> bytes:
    bad = DAMAGE[damage](path.read_bytes())
    path.write_bytes(bad)
    return bad


def _set_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_result_makes_its_stage_incomplete_and_is_set_aside(
    tmp_path: Path, graph: StageGraph, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    hit, kept = graph.pretrain.values()
    _complete(store, hit, val_loss=0.5)
    _complete(store, kept, val_loss=0.4)
    result = tmp_path / hit.dir / "result.parquet"
    bad = _damage(result, damage)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not store.stage_complete("pretrain", hit.stage_id)
        assert store.stage_row("pretrain", hit.stage_id) is None
    assert not result.exists()
    assert store.stage_ids("pretrain") == sorted(graph.pretrain), "its directory stays"
    assert store.cell_ids() == []
    (aside,) = _set_aside(result)
    assert re.fullmatch(r"result\.parquet\.damaged-\d{8}T\d{6}Z", aside.name)
    assert aside.read_bytes() == bad, "the damaged bytes are kept"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{result}: damaged (not a readable Parquet file: ")
    assert warning.endswith(f"set aside as {aside.name} and read as missing")
    cells, curves = write_tables(store, graph)
    assert cells.column("pretrain_id").to_pylist() == [kept.stage_id]
    assert set(curves.column("cell_id").to_pylist()) == {kept.stage_id}
    assert store.read_table("pretrain.parquet").column("stage_id").to_pylist() == [kept.stage_id]


def test_a_damaged_finetune_result_leaves_its_cell_pending(
    tmp_path: Path, tiny_cell, caplog: pytest.LogCaptureFixture
) -> None:
    cell = tiny_cell()
    graph = build_graph([(cell, manifest_digests(cell))])
    (pre,), (ft,) = graph.pretrain.values(), graph.finetune.values()
    store = ResultStore(str(tmp_path))
    _complete(store, pre, val_loss=0.5)
    _complete(store, ft, finetune_top1=40.0)
    assert write_tables(store, graph)[0].column("status").to_pylist() == ["complete"]
    result = tmp_path / ft.dir / "result.parquet"
    _damage(result, "truncated")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cells, _ = write_tables(store, graph)
    assert cells.column("status").to_pylist() == ["pending"]
    assert cells.column("finetune_top1").to_pylist() == [None]
    assert cells.column("val_loss").to_pylist() == [0.5], "the pre-training result stands"
    assert _set_aside(result) and caplog.records[0].getMessage().startswith(f"{result}: damaged")


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_read_only_store_reports_damage_once_and_moves_nothing(
    tmp_path: Path, graph: StageGraph, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    hit, trunk = graph.pretrain.values()
    assert hit.trunk_id == trunk.stage_id
    _complete(ResultStore(str(tmp_path)), hit)
    result = tmp_path / hit.dir / "result.parquet"
    _damage(result, damage)
    store = ResultStore(str(tmp_path), set_aside=False)  # as `mimscale status` opens it
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            # not done: the branch waits for its trunk again
            assert [r.state for r in study_status(store, graph)] == ["waiting", "pending"]
            assert store.stage_row("pretrain", hit.stage_id) is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{result}: damaged (not a readable Parquet file: ")
    assert warning.endswith("; read as missing")
    assert result.exists() and not _set_aside(result)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"phase": "pretrain", "st', r"not JSON: Unterminated string"),
        (b"", r"not JSON: Expecting value"),
        ('{"phase": "prétrain"}'.encode("latin-1"), r"not JSON: 'utf-8' codec can't decode"),
        (b"\x00\xff\x13garbage", r"not JSON: "),
        (b'[1, 2, "step"]', r"a JSON list, not a dict"),
        (b"17", r"a JSON int, not a dict"),
    ],
)
def test_garbage_progress_is_read_as_missing(
    tmp_path: Path, graph: StageGraph, content: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    _, trunk = graph.pretrain.values()
    rel = f"{trunk.dir}/progress.json"
    store.write_json(rel, {"phase": "pretrain", "step": 4})
    progress = tmp_path / rel
    progress.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        status = study_status(store, graph)
    assert status[1].state == "pending" and status[1].step is None  # not running at a step
    assert re.match(rf"{re.escape(str(progress))}: damaged \({why}", caplog.records[0].getMessage())
    (aside,) = _set_aside(progress)
    assert aside.read_bytes() == content
    store.write_json(rel, {"phase": "pretrain", "step": 5})  # the stage writes it afresh
    assert store.read_json(rel) == {"phase": "pretrain", "step": 5}
    trunk_now = study_status(store, graph)[1]
    assert (trunk_now.state, trunk_now.step) == ("running", 5)


def test_a_complete_result_whose_curves_are_damaged(
    tmp_path: Path, graph: StageGraph, caplog: pytest.LogCaptureFixture
) -> None:
    """The curves are reported and set aside, and so is the stage's result: the stage is
    no longer complete, so the next run writes both again (from its final checkpoint)."""
    store = ResultStore(str(tmp_path))
    hit, kept = graph.pretrain.values()
    _complete(store, hit)
    _complete(store, kept)
    curves = tmp_path / hit.dir / "curves.parquet"
    result = tmp_path / hit.dir / "result.parquet"
    curves.write_bytes(curves.read_bytes()[:-9])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cells, curve = write_tables(store, graph)
    assert curve.column("cell_id").to_pylist() == [kept.stage_id]
    assert cells.column("cell_id").to_pylist() == [kept.stage_id]
    assert _set_aside(curves) and not curves.exists()
    assert _set_aside(result) and not result.exists()
    assert not store.stage_complete("pretrain", hit.stage_id)
    assert store.stage_complete("pretrain", kept.stage_id)
    first, second = [r.getMessage() for r in caplog.records]
    assert first.startswith(f"{curves}: damaged (not a readable Parquet file: ")
    assert second.startswith(f"{result}: damaged (its curves.parquet is missing or damaged; ")


def test_the_tables_are_rebuilt_when_damaged(tmp_path: Path, graph: StageGraph) -> None:
    store = ResultStore(str(tmp_path))
    for stage in graph.pretrain.values():
        _complete(store, stage)
    cells, curves = write_tables(store, graph)
    pretrain = store.read_table("pretrain.parquet")
    for name in ("cells", "curves", "pretrain"):
        (tmp_path / f"{name}.parquet").write_bytes(b"PAR1 torn")
        assert store.read_table(f"{name}.parquet") is None
    again = write_tables(store, graph)
    assert again[0].equals(cells) and again[1].equals(curves) and cells.num_rows == 2
    assert store.read_table("cells.parquet").equals(cells)
    assert store.read_table("curves.parquet").equals(curves)
    assert store.read_table("pretrain.parquet").equals(pretrain)


def test_tables_carry_page_checksums(tmp_path: Path) -> None:
    """A flip inside a data page that still decodes is caught by the page CRC."""
    store = ResultStore(str(tmp_path))
    row = {"stage_id": "s1", "status": "complete", "error": "x" * 4000}
    store.write_table("t.parquet", table_of(PRETRAIN_COLUMNS, [row]))
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    at = data.index(b"complete")  # inside the status column's page (incompressible enough)
    data[at] ^= 0x01
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    unchecked = pq.read_table(tmp_path / "t.parquet")  # decodes: only the CRC tells
    assert unchecked.column("status").to_pylist() == ["bomplete"]
    assert store.read_table("t.parquet") is None


def test_writes_are_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is fsync'ed before it replaces the target, its directory after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = ResultStore(str(tmp_path))
    store.write_bytes("stages/x/result.parquet", b"data")
    target = str(tmp_path / "stages" / "x" / "result.parquet")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path))}/stages/x/\.result\.parquet\.\w+\.tmp", events[0][1]
    )
    assert events[1][1] == target and events[2][1] == str(tmp_path / "stages" / "x")
    assert Path(target).read_bytes() == b"data"
    assert sorted(p.name for p in (tmp_path / "stages" / "x").iterdir()) == ["result.parquet"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultStore(str(tmp_path))
    store.write_bytes("a/f.bin", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        store.write_bytes("a/f.bin", b"new")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"old"


# -- checkpoints ---------------------------------------------------------------------------
def _context(store: ResultStore, tiny_cell) -> TrialContext:
    return TrialContext(
        cell=tiny_cell(),
        store=store,
        stage_id="s1",
        stage_dir="stages/pretrain/s1",
        device=torch.device("cpu"),
    )


def test_saving_keeps_the_previous_checkpoint(tmp_path: Path, tiny_cell) -> None:
    ctx = _context(ResultStore(str(tmp_path)), tiny_cell)
    ctx.save("checkpoint.pt", {"step": 3})
    ctx.save("checkpoint.pt", {"step": 6})
    base = tmp_path / "stages" / "pretrain" / "s1"
    assert sorted(p.name for p in base.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert ctx.load("checkpoint.pt")["step"] == 6
    assert previous_name("stages/x.y/finetune.pt") == "stages/x.y/finetune.prev.pt"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "torn-directory"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, tiny_cell, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _context(ResultStore(str(tmp_path)), tiny_cell)
    ctx.save("checkpoint.pt", {"step": 3, "weights": torch.arange(4000.0)})
    ctx.save("checkpoint.pt", {"step": 6, "weights": torch.arange(4000.0)})
    newest = tmp_path / "stages" / "pretrain" / "s1" / "checkpoint.pt"
    data = newest.read_bytes()
    torn = data[:-40] + bytes(40)  # the zip's central directory overwritten
    newest.write_bytes(torn if damage == "torn-directory" else DAMAGE[damage](data))
    with caplog.at_level(logging.WARNING):
        state = ctx.load("checkpoint.pt")
    assert state["step"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"{newest}: damaged (not a readable checkpoint: ")
    assert messages[1] == (
        "stages/pretrain/s1/checkpoint.pt: resuming from the previous checkpoint "
        "stages/pretrain/s1/checkpoint.prev.pt"
    )
    assert _set_aside(newest) and not newest.exists()


def test_no_readable_checkpoint_is_a_fresh_start(
    tmp_path: Path, tiny_cell, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    ctx = _context(store, tiny_cell)
    ctx.save("checkpoint.pt", {"step": 3})
    ctx.save("checkpoint.pt", {"step": 6})
    base = tmp_path / "stages" / "pretrain" / "s1"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (base / name).write_bytes((base / name).read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(store, "stages/pretrain/s1/checkpoint.pt") is None
    assert caplog.records[-1].getMessage() == (
        "stages/pretrain/s1/checkpoint.pt: no readable checkpoint left; the stage starts afresh"
    )
    assert len(list(base.glob("*.damaged-*"))) == 2
    assert load_checkpoint(store, "stages/pretrain/s1/checkpoint.pt") is None  # nothing left


# -- an output that cannot be written --------------------------------------------------------
def test_an_output_under_a_file_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(
        OutputError,
        match=rf"output_dir {tmp_path}/notes/study: cannot write there \({tmp_path}/notes is a "
        r"file, not a folder\)",
    ):
        ResultStore(str(tmp_path / "notes" / "study")).check_writable()
    ResultStore(str(tmp_path / "new" / "study")).check_writable()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"], "a check creates nothing"


def test_a_read_only_output_is_refused(tmp_path: Path) -> None:
    """In a child process that file permissions apply to (even when the tests run as root)."""
    from subsets_fixtures import REPO, _drop_root_file_access

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code = (
        "import sys\nfrom scaling.study.store import ResultStore, OutputError\n"
        "try:\n    ResultStore(sys.argv[1]).check_writable()\n"
        "except OutputError as e:\n    print(e)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(locked / "study")],
            cwd=REPO,
            capture_output=True,
            text=True,
            preexec_fn=_drop_root_file_access if os.geteuid() == 0 else None,
            check=True,
        ).stdout
    finally:
        locked.chmod(0o755)
    assert out == f"output_dir {locked}/study: cannot write there ({locked} is not writable)\n"
    assert list(locked.iterdir()) == []
