"""The study lock: one ``mimscale run`` writes a study's output at a time.

Mechanism: a *lease object*, ``study.lock`` at the root of the output, that works the
same on a local or shared file system and on object storage (``s3://`` through
pyarrow.fs), where there is no flock and no conditional write. The lease is JSON::

    {"token": <random>, "host": ..., "pid": ..., "started": <UTC ISO>,
     "heartbeat": <unix s>, "lease_s": 60, "command": ...}

* **Acquire**: read the lease; if a live one is there, refuse (or wait with
  ``wait=True``). Otherwise write ours (an atomic whole-object write), wait
  ``settle_s``, and read it back: whoever's token is there then holds the lock; a
  racer that reads back another token lost and is refused. Two racers both see an
  empty or stale lease only if each writes within ``settle_s`` of its read, and then
  the later write wins for both readers; ``settle_s`` (1 s) is far longer than the
  moment between a read and the write that follows it.
* **Live or stale**: a lease is stale when its heartbeat is older than its
  ``lease_s``, or when its holder ran on this host and that pid is gone (a killed
  run on the same machine is taken over at once). Hosts' clocks must agree to well
  within ``lease_s`` (NTP).
* **Heartbeat**: a daemon thread rewrites the lease every ``lease_s / 6``. Before
  each write it reads the lease back; if another token is there (the lease lapsed,
  e.g. the process was suspended, and another run took over), the lock is *lost*:
  it logs an error, stops heart-beating and sets :attr:`StudyLock.lost`.
* **Release**: stop the heartbeat; delete the lease if it is still ours.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any

from scaling.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "study.lock"
LEASE_S = 60.0
SETTLE_S = 1.0
POLL_S = 5.0


class StudyLocked(UserError):
    """Another live run holds the study's lock."""


def _holder_text(lease: dict[str, Any], now: float) -> str:
    age = now - float(lease.get("heartbeat", 0))
    return (
        f"host {lease.get('host')}, pid {lease.get('pid')}, started {lease.get('started')} "
        f"(last heartbeat {age:.0f} s ago)"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_reason(lease: dict[str, Any], now: float) -> str | None:
    """Why ``lease`` no longer holds the lock, or None while it is live."""
    age = now - float(lease.get("heartbeat", 0))
    if age > float(lease.get("lease_s", LEASE_S)):
        return (
            f"its heartbeat is {age:.0f} s old (lease {float(lease.get('lease_s', LEASE_S)):g} s)"
        )
    if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", 0))):
        return f"pid {lease.get('pid')} is no longer running on this host"
    return None


class StudyLock:
    """A held lease on a study's output (see the module docstring)."""

    def __init__(self, store: Any, lease: dict[str, Any]) -> None:
        self.store = store
        self.lease = lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="study-lock", daemon=True)

    @property
    def token(self) -> str:
        return str(self.lease["token"])

    def _beat(self) -> None:
        interval = float(self.lease["lease_s"]) / 6
        while not self._stop.wait(interval):
            try:
                current = read_lease(self.store)
                if current is None or current.get("token") != self.token:
                    holder = _holder_text(current, time.time()) if current else "nobody"
                    log.error("%s: lost the study lock (now held by %s)", self.store.uri, holder)
                    self.lost = True
                    return
                self.lease = {**self.lease, "heartbeat": time.time()}
                _write_lease(self.store, self.lease)
            except OSError as err:  # a storage hiccup: the next beat tries again
                log.warning("%s: study lock heartbeat failed: %s", self.store.uri, err)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        current = read_lease(self.store)
        if current is not None and current.get("token") == self.token:
            self.store.delete(LOCK_NAME)

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _locked(store: Any, holder: str, waited: float | None) -> StudyLocked:
    after = "; run with --wait to wait for it" if waited is None else f"; waited {waited:g} s"
    return StudyLocked(
        f"{store.uri}: the study is locked by another run: {holder}{after} (a lock whose "
        "holder stopped is taken over once its heartbeat is older than its lease, at once "
        "on the holder's host)"
    )


def check_free(store: Any) -> None:
    """Refuse at once (StudyLocked) while a live run holds the lock; writes nothing."""
    lease, now = read_lease(store), time.time()
    if lease is not None and stale_reason(lease, now) is None:
        raise _locked(store, _holder_text(lease, now), None)


def _sound(lease: dict[str, Any]) -> bool:
    """Finite numbers where a lease has numbers: a NaN or infinite heartbeat would hold the
    lock forever, a text one would stop every run with a traceback."""
    numbers = (lease["heartbeat"], lease.get("lease_s", LEASE_S))
    finite = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers
    )
    return finite and isinstance(lease.get("pid", 0), int)


def read_lease(store: Any) -> dict[str, Any] | None:
    """The lease in ``store`` (None: no lock; a garbage one reads as a stale lease)."""
    data = store.read_bytes(LOCK_NAME)
    if data is None:
        return None
    try:
        lease = json.loads(data)
        if isinstance(lease, dict) and {"token", "heartbeat"} <= set(lease) and _sound(lease):
            return lease
    except ValueError:
        pass
    log.warning("%s: unreadable study lock %r; treating it as stale", store.uri, data[:80])
    return {"token": "?", "heartbeat": 0, "lease_s": 0}


def _write_lease(store: Any, lease: dict[str, Any]) -> None:
    store.write_bytes(LOCK_NAME, json.dumps(lease, sort_keys=True).encode())


def _try_acquire(store: Any, lease_s: float, settle_s: float, command: str) -> StudyLock | str:
    """The lock, or the text naming its live holder."""
    now = time.time()
    current = read_lease(store)
    if current is not None:
        why = stale_reason(current, now)
        if why is None:
            return _holder_text(current, now)
        log.warning(
            "%s: taking over a stale study lock of %s: %s",
            store.uri,
            _holder_text(current, now),
            why,
        )
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    lease = {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "heartbeat": now,
        "lease_s": lease_s,
        "command": command,
    }
    _write_lease(store, lease)
    time.sleep(settle_s)
    back = read_lease(store)
    if back is None or back.get("token") != lease["token"]:
        return _holder_text(back, time.time()) if back else "a run that started and stopped"
    lock = StudyLock(store, lease)
    lock._thread.start()
    return lock


def acquire(
    store: Any,
    wait: bool = False,
    timeout: float | None = None,
    *,
    lease_s: float = LEASE_S,
    settle_s: float = SETTLE_S,
    poll_s: float = POLL_S,
    command: str = "mimscale run",
) -> StudyLock:
    """Take the study lock of ``store`` (a ResultStore), or raise StudyLocked naming its holder.

    ``wait``: poll every ``poll_s`` until the holder releases it or its lease lapses,
    at most ``timeout`` seconds (None: no limit).
    """
    if lease_s <= 0 or settle_s < 0 or poll_s <= 0:
        raise ValueError(f"lock timings must be positive: {lease_s=}, {settle_s=}, {poll_s=}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got = _try_acquire(store, lease_s, settle_s, command)
        if isinstance(got, StudyLock):
            log.info("%s: study lock taken (pid %d)", store.uri, os.getpid())
            return got
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise _locked(store, got, timeout if wait else None)
        log.info("%s: waiting for the study lock held by %s", store.uri, got)
        pause = poll_s if deadline is None else min(poll_s, max(deadline - time.monotonic(), 0))
        time.sleep(pause)
