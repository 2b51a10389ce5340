"""Clean up a driver's local Ray instance however the driver ends, SIGKILL included.

A local instance (``mimscale run`` without ``--address``) is a dozen processes started by
the driver. ``ray.shutdown()`` stops them on a normal exit, but after a SIGKILL of the
driver its dashboard and runtime-env agents live on (about a minute, re-parented to
init) and its session folder stays in the temp directory. So the driver starts this
watchdog first: a separate process (its own session, so a terminal's Ctrl-C does not
reach it) holding the read end of a pipe whose write end only the driver has. While
the driver lives, the watchdog records the driver's Ray processes (pid and start
time, from ``/proc``) every half second — the processes that name the instance's private
temp folder on their command line (GCS, raylet, monitors) and their descendants
(agents, workers), nothing else of the driver's; when the pipe reaches end of file — the driver
exited or was killed — it sends SIGTERM to every recorded process still alive (same
start time, so a reused pid is never hit) and their children, SIGKILL to any left
after a grace period, and removes the instance's private temp folder.

Standard library only: it runs as a plain script (``python reaper.py DIR PID``), with
no import of ``scaling``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 5.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie is gone already
        return None
    return int(fields[1]), int(fields[19])


def _table() -> dict[int, tuple[int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def descendants(roots: set[int]) -> dict[int, int]:
    """{pid: start time} of every live descendant of ``roots`` (not the roots)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def _mentions(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def ray_tree(driver: int, temp_dir: str) -> dict[int, int]:
    """The driver's Ray processes: those started with ``temp_dir`` on their command line
    (GCS, raylet, monitors, dashboard) and all their descendants (agents, workers)."""
    roots = {
        pid: t
        for pid, t in descendants({driver}).items()
        if pid != os.getpid() and _mentions(pid, temp_dir)  # not this watchdog
    }
    return roots | descendants(set(roots))


def _alive(known: dict[int, int]) -> dict[int, int]:
    return {pid: t for pid, t in known.items() if (st := _stat(pid)) and st[1] == t}


def _signal(pids: dict[int, int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def reap(known: dict[int, int], temp_dir: str) -> None:
    """Stop what is left of ``known`` (and its children), then remove ``temp_dir``."""
    left = _alive(known)
    left |= descendants(set(left))
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while (left := _alive(left)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def watch(driver: int, temp_dir: str) -> None:
    """Record the driver's tree until stdin ends, then reap it."""
    known: dict[int, int] = {}
    while True:
        known |= ray_tree(driver, temp_dir)
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    reap(known, temp_dir)


class Reaper:
    """The driver's handle on its watchdog: :meth:`close` after ``ray.shutdown()``."""

    def __init__(self, temp_dir: str) -> None:
        read_end, self._write_end = os.pipe()  # not inheritable: Ray's processes lack it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, temp_dir, str(os.getpid())],
                stdin=read_end,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        self.temp_dir = temp_dir

    def close(self, timeout: float = 30.0) -> None:
        """Let the watchdog reap and remove the temp folder; wait for it."""
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)


if __name__ == "__main__":
    watch(int(sys.argv[2]), sys.argv[1])
