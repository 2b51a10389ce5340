"""Stopping a run on purpose: Ctrl-C (SIGINT) and SIGTERM end ``mimscale run`` cleanly.

Both signals become one exception, :class:`Interrupted` (a BaseException, so no
``except Exception`` on the way swallows it), raised wherever the driver is — usually
inside Ray Tune's loop. Tune's own SIGINT handler (which stops "gracefully", marks every
trial in flight as errored and suggests ``Tuner.restore``) is switched off with Ray's
documented ``TUNE_DISABLE_SIGINT_HANDLER``, and Ray's SIGTERM handler (``sys.exit``,
installed by ``ray.init``) is replaced once connected (:func:`take_signals` again). The
run verb then marks the stages that were in flight ``interrupted``, prints how to resume,
and exits ``128 + signal``: 130 for SIGINT, 143 for SIGTERM. A second signal while it
winds down is only logged.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {self.name}")


_raised = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _raised
    if _raised:  # winding down already: say so, do not break the clean-up
        log.warning("%s again: still stopping", signal.Signals(signum).name)
        return
    _raised = True
    raise Interrupted(signum)


def take_signals() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` (call again after ``ray.init``)."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside; the old handlers after."""
    global _raised
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _raised = False
    take_signals()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
