"""After a driver SIGKILL no Ray process or session folder is left (issue 15 item 9).

A real driver starts a real local Ray instance with its watchdog (:mod:`scaling.study.reaper`)
and a task in flight, and is killed with SIGKILL: every process of its tree (GCS, raylet,
the dashboard and runtime-env agents that used to outlive it by a minute, the worker) is
gone within seconds, and so is the instance's temp folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_helpers import REPO

from scaling.study.reaper import Reaper, _alive, descendants

DRIVER = """
import os, sys, time
from scaling.study.reaper import Reaper
temp = sys.argv[1]
reaper = Reaper(temp)
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=temp)
@ray.remote(num_cpus=0)
def sleeper():
    time.sleep(300)
ref = sleeper.remote()
ray.get(ray.remote(lambda: 1).remote())  # a worker is up
time.sleep(2)
print("ready", reaper.proc.pid, flush=True)
time.sleep(600)
"""


def _gone(pids: dict[int, int], deadline_s: float) -> dict[int, int]:
    deadline = time.monotonic() + deadline_s
    while (left := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_and_no_session(tmp_path: Path) -> None:
    temp = f"/tmp/mimscale-test-ray-{os.getpid()}"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, temp], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = driver.stdout.readline()
        assert line.startswith("ready"), line
        watchdog = int(line.split()[1])
        tree = descendants({driver.pid})
        tree.pop(watchdog)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in tree}
        assert b"ray::DashboardAgent" in names and b"ray::RuntimeEnvAgent" in names, names
        assert Path(temp).is_dir()
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert _gone(tree, 30) == {}, "Ray processes outlived the driver"
    deadline = time.monotonic() + 10
    while Path(temp).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(temp).exists(), "the session folder stayed"


def test_close_removes_the_folder_and_spares_other_children(tmp_path: Path) -> None:
    folder = tmp_path / "ray-temp"
    (folder / "session_x" / "logs").mkdir(parents=True)
    mark = f"--temp-dir={folder}"
    ray_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", mark])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reaper = Reaper(str(folder))
        time.sleep(1.5)  # the watchdog has seen its tree
        reaper.close()
        assert reaper.proc.returncode == 0
        assert not folder.exists()
        assert ray_like.wait(5) == -signal.SIGTERM, "a process of the instance was left"
        assert other.poll() is None, "a process outside the instance was stopped"
    finally:
        other.kill()
        other.wait()
