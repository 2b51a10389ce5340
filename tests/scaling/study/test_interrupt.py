"""SIGINT and SIGTERM become Interrupted (exit 130 / 143); a second signal is only logged."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from study_helpers import REPO

SCRIPT = """
import logging, os, signal, sys, time
from scaling.study.interrupt import Interrupted, interruptible
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
sig = getattr(signal, sys.argv[1])
try:
    with interruptible():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        os.kill(os.getpid(), sig)
        time.sleep(10)
except Interrupted as stop:
    print("caught", stop.name, stop.exit_code, stop, flush=True)
    os.kill(os.getpid(), sig)  # the old handlers are back: the default action ends us
    time.sleep(10)
print("not reached", flush=True)
"""


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_raises_interrupted(name: str, code: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, name], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    # after the block the old handler is back: SIGINT raises KeyboardInterrupt, SIGTERM kills
    if name == "SIGINT":
        assert "KeyboardInterrupt" in out.stderr
    else:
        assert out.returncode == -signal.SIGTERM
    assert out.stdout == f"caught {name} {code} stopped by {name}\n"


SECOND = """
import logging, os, signal, time
from scaling.study.interrupt import Interrupted, interruptible
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
with interruptible():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    except Interrupted as stop:
        os.kill(os.getpid(), signal.SIGINT)  # while winding down
        time.sleep(0.2)
        print("caught", stop.name, stop.exit_code, str(stop), flush=True)
"""


def test_a_second_signal_while_stopping_is_logged_only() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SECOND], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "caught SIGTERM 143 stopped by SIGTERM\n"
    assert "WARNING SIGINT again: still stopping" in out.stderr
