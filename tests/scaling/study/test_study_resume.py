"""The driver of ``mimscale run`` is killed (SIGKILL) mid-study; a second run finishes the
study without redoing the cells that had finished, and no cell appears twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_helpers import REPO, tiny_tables, write_study

from scaling.config.load import load_study
from scaling.study.store import ResultStore

pytestmark = pytest.mark.slow


def _complete(store: ResultStore) -> list[str]:
    return [c for c in store.stage_ids("pretrain") if store.stage_complete("pretrain", c)]


def _started(store: ResultStore) -> list[str]:
    ids = store.stage_ids("pretrain")
    return [c for c in ids if store.exists(f"stages/pretrain/{c}/progress.json")]


def test_killed_driver_then_rerun_finishes_without_redoing_cells(
    tmp_path: Path, demo_dir: Path
) -> None:
    data = demo_dir
    tables = tiny_tables(
        data,
        tmp_path / "out",
        grid={"models": ["swinv2-nano"], "data": ["demo-25pct"], "iterations": [4, 60, 64]},
        # one 64-step trunk seeding 4 at step 3 and 60 at step 45 (×0.1 at 3/4): the driver
        # dies while the trunk runs and a branch waits for its fork checkpoint
        pretrain={
            "val_interval": 20,
            "checkpoint_interval": 10,
            "log_interval": 10,
            "schedule": "multistep",
            "warmup_fraction": 0.0,
            "warmup_steps": 1,
            "milestones": [0.75],
        },
    )
    path = write_study(tmp_path / "study.toml", tables)
    store = ResultStore(load_study(path).output_dir)
    cmd = [sys.executable, "-m", "scaling", "run", str(path), "--no-report"]
    # its own session: the Ray processes it starts can be cleaned up by group id
    driver = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            done = _complete(store)
            if done and len(set(_started(store)) - set(done)) >= 1:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the study finished before the driver could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        time.sleep(1.0)
        # the local Ray instance dies with its driver; reap what is left of the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    finished = _complete(store)
    assert 1 <= len(finished) < 3, finished
    rows = {c: Path(store.path(f"stages/pretrain/{c}/result.parquet")) for c in finished}
    before = {c: (p.stat().st_mtime_ns, p.read_bytes()) for c, p in rows.items()}

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"{len(finished)} complete, {3 - len(finished)} to run" in again.stdout
    assert f"grid: {3 - len(finished)} stages completed, 0 failed" in again.stdout
    assert {c: (p.stat().st_mtime_ns, p.read_bytes()) for c, p in rows.items()} == before

    cells = store.read_table("cells.parquet").to_pandas()
    assert len(cells) == 3 and cells["cell_id"].is_unique
    assert (cells["status"] == "complete").all()
    assert sorted(cells["iterations"]) == [4, 60, 64]
    curves = store.read_table("curves.parquet").to_pandas()
    keys = ["cell_id", "phase", "step", "split", "metric"]
    assert not curves.duplicated(keys).any(), "a resumed cell logged a point twice"
