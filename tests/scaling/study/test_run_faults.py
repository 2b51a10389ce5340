"""``mimscale run`` under injected faults (issue 15): each test asserts the exit code, the
message and what the store holds afterwards.

Signals (Ctrl-C = SIGINT, SIGTERM) stop a real run on a real local Ray instance; a held
study lock, unreachable clusters, an output that cannot be written, resources the
cluster lacks, a manifest whose rows changed and a damaged result file are each set up
for real, then the CLI runs in its own process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from study_helpers import REPO, mimscale, tiny_tables, write_study

from scaling.study.store import ResultStore

LENGTHS = {"grid": {"models": ["swinv2-nano"], "data": ["demo-25pct"], "iterations": [40, 60]}}


def _study(tmp_path: Path, data: Path, **changes) -> Path:
    return write_study(tmp_path / "s.toml", tiny_tables(data, tmp_path / "out", **changes))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _states(study: Path) -> list[str]:
    out = mimscale("status", str(study), "--json")
    assert out.returncode == 0, out.stderr
    return [s["state"] for s in json.loads(out.stdout)["stages"]]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_stages_interrupted_and_the_rerun_resumes(
    tmp_path: Path, demo_dir: Path, sig: int, code: int
) -> None:
    study = _study(tmp_path, demo_dir, **LENGTHS)
    run = subprocess.Popen(
        [sys.executable, "-m", "scaling", "run", str(study), "--no-report"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stages = tmp_path / "out" / "stages" / "pretrain"
    deadline = time.monotonic() + 180
    while not list(stages.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    name = signal.Signals(sig).name
    assert re.search(
        rf"interrupted \({name}\): 2 stages stopped in flight \([0-9a-f]{{16}}, [0-9a-f]{{16}}\); "
        rf"complete stages are kept\.\nresume with: mimscale run {re.escape(str(study))}\n",
        err,
    ), err
    assert "Traceback" not in err and "Tuner.restore" not in err and "failed" not in err
    assert _states(study) == ["interrupted", "interrupted"]
    store = ResultStore(str(tmp_path / "out"))
    rows = [store.stage_row("pretrain", p.name) for p in stages.iterdir()]
    assert {r["status"] for r in rows} == {"interrupted"}
    assert not list(Path("/tmp").glob(f"mimscale-ray-{run.pid}")), "the Ray temp folder stayed"

    again = mimscale("run", str(study), "--no-report", timeout=300)
    assert again.returncode == 0, again.stderr
    assert _states(study) == ["done", "done"]
    for stage in stages.iterdir():  # resumed, not appended to: one point per logged step
        curve = store.stage_curves("pretrain", stage.name).to_pandas()
        assert not curve.duplicated(["phase", "step", "split", "metric"]).any()
        assert curve["step"].max() == store.stage_row("pretrain", stage.name)["iterations"]


def _hold_lock(out: Path) -> subprocess.Popen:
    """Another live run's lease (a real process on this host holds it)."""
    code = (
        "import sys, time\nfrom scaling.study.lock import acquire\n"
        "from scaling.study.store import ResultStore\n"
        "lock = acquire(ResultStore(sys.argv[1]), settle_s=0.1)\n"
        "print('held', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_run_is_refused_while_the_lock_is_held(tmp_path: Path, demo_dir: Path) -> None:
    study = _study(tmp_path, demo_dir)
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        before = _files(out)
        result = mimscale("run", str(study), "--no-report")
        assert result.returncode == 2, result.stderr
        assert re.search(
            rf"error: {re.escape(str(out))}: the study is locked by another run: host "
            rf"{re.escape(socket.gethostname())}, pid {holder.pid}, started 20\S+ \(last "
            r"heartbeat \d+ s ago\); run with --wait to wait for it",
            result.stderr,
        ), result.stderr
        assert _files(out) == before == ["study.lock"]
        waited = mimscale("run", str(study), "--no-report", "--wait", "1")
        assert waited.returncode == 2 and "; waited 1 s" in waited.stderr, waited.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "127.0.0.1:1",
            r"--address 127\.0\.0\.1:1: cannot reach a Ray cluster there \(tried a TCP "
            r"connection to 127\.0\.0\.1:1 for up to 60 s: connection refused\)",
        ),
        (
            "ray://127.0.0.1:1",
            r"--address ray://127\.0\.0\.1:1: cannot reach a Ray cluster there \(tried a TCP "
            r"connection to 127\.0\.0\.1:1 for up to 60 s: connection refused\)",
        ),
        ("head-node", r"--address head-node: not an address; give host:port"),
    ],
)
def test_an_unreachable_cluster_fails_fast_and_writes_nothing(
    tmp_path: Path, demo_dir: Path, address: str, message: str
) -> None:
    study = _study(tmp_path, demo_dir)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "scaling", "run", str(study), "--address", address],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert re.search(rf"^error: {message}", result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert _files(tmp_path / "out") == []


def _gcs_running() -> bool:
    """Ray's ``auto`` finds any GCS process on the machine (other test runs' too)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in cmdline.read_bytes().split(b"\0")[0]:
                return True
        except OSError:
            continue
    return False


def test_auto_without_a_cluster_fails_fast_and_writes_nothing(
    tmp_path: Path, demo_dir: Path
) -> None:
    if _gcs_running():
        pytest.skip("a Ray cluster runs on this machine (another test run): auto would join it")
    study = _study(tmp_path, demo_dir)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "scaling", "run", str(study), "--address", "auto"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith(
        "error: --address auto: could not join the Ray cluster: no Ray cluster was started on "
        "this machine (`ray start --head`), and RAY_ADDRESS is not set\n"
    )
    assert _files(tmp_path / "out") == []


def test_an_output_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, demo_dir: Path
) -> None:
    (tmp_path / "taken").write_text("a file where a folder should be")
    study = _study(tmp_path, demo_dir, output_dir=str(tmp_path / "taken" / "study"))
    result = mimscale("run", str(study))
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: output_dir {tmp_path}/taken/study: cannot write there ({tmp_path}/taken is "
        "a file, not a folder)\n"
    )


@pytest.mark.slow
def test_resources_the_cluster_lacks_are_named_before_writing(
    tmp_path: Path, demo_dir: Path
) -> None:
    study = _study(tmp_path, demo_dir)
    result = mimscale("run", str(study), "--set", "resources.cpus=64")
    assert result.returncode == 2, result.stderr
    assert re.search(
        rf"error: {re.escape(str(study))} \(--set\): resources\.cpus: a swinv2-nano cell needs "
        r"64 CPU but the Ray cluster has \d+; lower resources\.cpus or join a larger cluster",
        result.stderr,
    ), result.stderr
    assert _files(tmp_path / "out") == []
    assert not list(Path("/tmp").glob("mimscale-ray-*/session_*/logs/raylet.out.*x"))


def test_a_manifest_whose_rows_changed_is_refused_before_writing(
    tmp_path: Path, demo_dir: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir / "manifests", data / "manifests")
    (data / "train").symlink_to(demo_dir / "train")
    manifest = data / "manifests" / "demo-25pct.parquet"
    table = pq.read_table(manifest)
    smaller = table.slice(1).replace_schema_metadata(table.schema.metadata)
    pq.write_table(smaller, manifest)
    result = mimscale("run", str(_study(tmp_path, data)))
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: {manifest}: the rows were changed after the manifest was built (it has "
        f"{table.num_rows - 1} rows, its metadata says {table.num_rows}); rebuild it with "
        "`mimscale subsets build`\n"
    )
    assert _files(tmp_path / "out") == []


@pytest.mark.slow
def test_a_damaged_result_is_reported_set_aside_and_rerun(tmp_path: Path, demo_dir: Path) -> None:
    study = _study(tmp_path, demo_dir)
    first = mimscale("run", str(study), "--no-report", timeout=300)
    assert first.returncode == 0, first.stderr
    (result,) = (tmp_path / "out" / "stages" / "pretrain").glob("*/result.parquet")
    result.write_bytes(result.read_bytes()[:40])
    status = mimscale("status", str(study))
    assert status.returncode == 0, status.stderr
    assert f"{result}: damaged (not a readable Parquet file: " in status.stderr
    assert status.stdout.splitlines()[-1] != "1 pretrain stages: 1 done"  # read as missing
    assert result.exists(), "status only reports"
    again = mimscale("run", str(study), "--no-report", timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{result}: damaged (not a readable Parquet file: " in again.stderr
    assert list(result.parent.glob("result.parquet.damaged-*"))
    assert _states(study) == ["done"]
    # damaged curves of a complete stage: curves and result set aside, both written again
    # in the same run from the final checkpoint (no training: it is not rewritten)
    curves = result.parent / "curves.parquet"
    points = pq.read_table(curves).num_rows
    final = (result.parent / "checkpoint.pt").read_bytes()
    curves.write_bytes(curves.read_bytes()[:-9])
    third = mimscale("run", str(study), "--no-report", timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"{curves}: damaged (not a readable Parquet file: " in third.stderr
    assert f"{result}: damaged (its curves.parquet is missing or damaged; " in third.stderr
    assert pq.read_table(curves).num_rows == points and _states(study) == ["done"]
    assert (result.parent / "checkpoint.pt").read_bytes() == final


@pytest.mark.slow
def test_skipped_images_are_counted_and_said_on_the_console(tmp_path: Path, demo_dir: Path) -> None:
    """Five zero-byte training images (the floor allows five) in a one-epoch run."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    paths = pq.read_table(data / "manifests" / "demo-25pct.parquet").column("path").to_pylist()
    for rel in paths[:5]:
        (data / rel).write_bytes(b"")
    grid = {"models": ["swinv2-nano"], "data": ["demo-25pct"], "iterations": [48]}
    study = _study(tmp_path, data, grid=grid)
    result = mimscale("run", str(study), "--no-report", timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^warning: pretrain stage [0-9a-f]{16} \(swinv2-nano, demo-25pct\) skipped unreadable "
        r"images: 5 training",
        result.stderr,
        re.M,
    ), result.stderr
    cells = pq.read_table(tmp_path / "out" / "cells.parquet").to_pylist()
    assert [c["bad_images"] for c in cells] == [5]
