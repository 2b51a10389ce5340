"""The study lock (issue 15 item 2): two runs never write one study at once.

Real processes contend for a real store: a local directory and a bucket on a local S3
server (moto, reached over HTTP as MinIO or AWS would be). A second acquirer is refused
with the holder's host, pid and start time, or waits; a stale lease (dead pid on this
host, or a heartbeat older than its lease) is taken over; a live one is kept fresh by
its heartbeat; a holder whose lease was taken notices.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_helpers import REPO

from scaling.study.lock import LOCK_NAME, StudyLocked, acquire, read_lease
from scaling.study.store import ResultStore

FAST = {"settle_s": 0.2, "poll_s": 0.1}

HOLDER = """
import sys, time, pathlib
from scaling.study.lock import acquire, StudyLocked
from scaling.study.store import ResultStore
uri, release_when, lease_s = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
try:
    lock = acquire(ResultStore(uri), lease_s=lease_s, settle_s=0.5)
except StudyLocked as err:
    print("refused", err, flush=True)
    sys.exit(3)
print("held", flush=True)
while not release_when.exists():
    time.sleep(0.05)
lock.release()
print("released", "lost" if lock.lost else "kept", flush=True)
"""


def _holder(uri: str, release_when: Path, lease_s: float = 60, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, str(release_when), str(lease_s)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line == "held\n", line + proc.stderr.read()


def _contend(uri: str, tmp_path: Path, env=None) -> None:
    """A second process is refused naming the first; after the release it gets the lock."""
    release = tmp_path / "release-1"
    first = _holder(uri, release, env=env)
    _wait_held(first)
    second = _holder(uri, tmp_path / "release-2", env=env)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 3, out + err
    assert f"host {socket.gethostname()}, pid {first.pid}, started 20" in out
    assert "run with --wait to wait for it" in out
    lease = read_lease(ResultStore(uri))
    assert lease["pid"] == first.pid
    release.touch()
    assert first.communicate(timeout=60)[0] == "released kept\n"
    assert read_lease(ResultStore(uri)) is None
    with acquire(ResultStore(uri), **FAST) as lock:
        assert read_lease(ResultStore(uri))["token"] == lock.token


def test_two_processes_on_a_local_directory(tmp_path: Path) -> None:
    _contend(str(tmp_path / "study"), tmp_path)


def test_two_processes_on_object_storage(tmp_path: Path, s3_server) -> None:
    _contend(f"{s3_server.bucket('locks')}/studies/tiny", tmp_path, env=s3_server.env)


def test_processes_started_together_get_one_lock(tmp_path: Path) -> None:
    uri, release = str(tmp_path / "study"), tmp_path / "release"
    procs = [_holder(uri, release) for _ in range(3)]
    first_lines = [p.stdout.readline() for p in procs]
    release.touch()
    for p in procs:
        p.communicate(timeout=60)
    assert sorted(line.split()[0] for line in first_lines) == ["held", "refused", "refused"]


def _lease(**fields) -> bytes:
    base = {
        "token": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": time.time(),
        "lease_s": 60,
    }
    return json.dumps({**base, **fields}).encode()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("lease", "why"),
    [
        (lambda: _lease(pid=_dead_pid()), r"pid \d+ is no longer running on this host"),
        (lambda: _lease(host="gone-node", heartbeat=time.time() - 120), r"heartbeat is 12\d s old"),
        (lambda: b"{torn", None),
    ],
)
def test_a_stale_lock_is_taken_over(
    tmp_path: Path, lease, why: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    store.write_bytes(LOCK_NAME, lease())
    with caplog.at_level("WARNING", logger="scaling.study.lock"), acquire(store, **FAST) as lock:
        assert read_lease(store)["token"] == lock.token
    text = caplog.text
    assert "taking over a stale study lock" in text
    if why:
        assert re.search(why, text), text
    else:
        assert "unreadable study lock" in text
    assert not store.exists(LOCK_NAME)


def test_a_live_lock_of_another_host_is_refused_and_waited_for(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path))
    store.write_bytes(LOCK_NAME, _lease(host="node-7", pid=4242))
    with pytest.raises(
        StudyLocked,
        match=rf"{tmp_path}: the study is locked by another run: host node-7, pid 4242, started "
        r"2026-01-01T00:00:00\+00:00 \(last heartbeat \d s ago\); run with --wait",
    ):
        acquire(store, **FAST)
    with pytest.raises(StudyLocked, match=r"node-7, pid 4242.*; waited 0\.5 s \(a lock"):
        acquire(store, wait=True, timeout=0.5, **FAST)
    # the holder's lease lapses while we wait: taken over
    store.write_bytes(LOCK_NAME, _lease(host="node-7", heartbeat=time.time() - 59))
    started = time.monotonic()
    with acquire(store, wait=True, timeout=30, **FAST):
        assert 0.5 < time.monotonic() - started < 10


def test_the_heartbeat_keeps_a_lock_live_and_notices_a_takeover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    lock = acquire(store, lease_s=0.6, **FAST)
    time.sleep(1.5)  # > 2 leases: only the heartbeat keeps it live
    with pytest.raises(StudyLocked):
        acquire(store, **FAST)
    assert not lock.lost
    store.write_bytes(LOCK_NAME, _lease(host="node-9", token="thief"))
    with caplog.at_level("ERROR", logger="scaling.study.lock"):
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lock.lost
    assert "lost the study lock (now held by host node-9" in caplog.text
    lock.release()
    assert read_lease(store)["token"] == "thief", "release leaves another holder's lease"


def test_timings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lock timings must be positive: lease_s=0"):
        acquire(ResultStore(str(tmp_path)), lease_s=0)
