"""Stopping a run on purpose: Ctrl-C (SIGINT) and SIGTERM end ``mimscale run`` cleanly.

Both signals become one exception, :class:`Interrupted` (a BaseException, so no
``except Exception`` on the way swallows it). Outside Ray Tune's loop it is raised where
the driver is; inside it (where a raise could land in Ray's native code), the handler
asks Tune to stop — Tune's own graceful stop, the SIGUSR1 handler it installs — and
``run_grid`` raises it once ``fit`` returns, before it could count the stopped trials as
failed. Tune's SIGINT handler (which would suggest ``Tuner.restore``) is switched off
with Ray's documented ``TUNE_DISABLE_SIGINT_HANDLER``; Ray's SIGTERM handler
(``sys.exit``, installed by ``ray.init``) is put back to ours by ``grid.connect``. The
run verb then marks the stages that were in flight ``interrupted``, prints how to resume,
and exits ``128 + signal``: 130 for SIGINT, 143 for SIGTERM. A second signal while it
winds down is only logged.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {self.name}")


_pending: int | None = None


def _tune_stopper() -> Callable[..., Any] | None:
    """Ray Tune's graceful stop while ``tune.Tuner.fit`` runs (its SIGUSR1 handler)."""
    handler = signal.getsignal(signal.SIGUSR1)
    module = getattr(handler, "__module__", "") or ""
    return handler if callable(handler) and module.startswith("ray.tune") else None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _pending is not None:  # winding down already: say so, do not break the clean-up
        log.warning("%s again: still stopping", name)
        return
    _pending = signum
    stop = _tune_stopper()
    if stop is None:
        raise Interrupted(signum)
    # Inside Tune's loop an exception raised here can land in Ray's native code; Tune's
    # own stop ends the loop instead, and run_grid raises Interrupted after it.
    log.warning("%s: stopping the stages in flight (they resume on the next run)", name)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # no Tuner.restore advice
    stop(signal.SIGUSR1, frame)


def raise_pending() -> None:
    """Raise :class:`Interrupted` if a signal stopped Tune's loop (after ``fit`` returns)."""
    if _pending is not None:
        raise Interrupted(_pending)


def take_signals() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` (call again after ``ray.init``)."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside; the old handlers after."""
    global _pending
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _pending = None
    take_signals()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
