"""A study lock with a damaged heartbeat (found by an adversarial pass over the CLI's
inputs): ``"heartbeat": "abc"`` or ``null`` stopped ``mimscale run`` with a ValueError /
TypeError traceback; ``NaN`` or ``1e400`` (infinite) held the study locked forever
("last heartbeat nan s ago"). Each now reads as an unreadable, stale lock: taken over."""

from __future__ import annotations

import json
import socket

import pytest

from scaling.study.lock import LOCK_NAME, acquire, check_free, read_lease
from scaling.study.store import ResultStore

FAST = {"settle_s": 0.05, "poll_s": 0.1}


@pytest.mark.parametrize(
    "lease",
    [
        '{"token": "x", "heartbeat": "abc", "host": "node-7"}',
        '{"token": "x", "heartbeat": null, "host": "node-7"}',
        '{"token": "x", "heartbeat": NaN, "host": "node-7"}',
        '{"token": "x", "heartbeat": 1e400, "host": "node-7"}',
        '{"token": "x", "heartbeat": 0, "lease_s": Infinity, "host": "node-7"}',
        json.dumps({"token": "x", "heartbeat": 0, "pid": "12x", "host": socket.gethostname()}),
    ],
)
def test_a_lock_with_a_damaged_heartbeat_is_stale(
    tmp_path, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    store.write_bytes(LOCK_NAME, lease.encode())
    with caplog.at_level("WARNING", logger="scaling.study.lock"):
        check_free(store)  # not held: no StudyLocked, no traceback
        with acquire(store, **FAST) as lock:
            assert read_lease(store)["token"] == lock.token
    assert "unreadable study lock" in caplog.text and "taking over a stale" in caplog.text
