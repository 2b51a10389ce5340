"""The one command-line entry point: ``mimscale <verb> …``.

Verbs follow the flow (subsets → plan/run/status/trial → analyze). Each stage
registers its verbs from a light module that imports nothing heavy at import
time, so ``mimscale --help`` starts fast; torch, ray and plotly load only inside
the verb that needs them.

A user-facing error is a :class:`scaling.errors.UserError`: its message is
printed as ``error: …`` and the process exits with its code (2: bad input).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from scaling.errors import UserError

# Modules that define ``register(subparsers) -> None``; each verb sets
# ``func(args) -> int`` through ``set_defaults``.
VERB_MODULES = (
    "subsets.cli",
    "scaling.study.verbs",
    "scaling.study.more_verbs",
    "scaling.study.trial_verb",
    "analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimscale",
        description="Data-scaling studies of masked image modeling (SimMIM): "
        "build subsets, plan and run model × data × length grids, analyze them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def entry() -> None:
    """The ``mimscale`` command: :func:`main`, then an exit that native pools cannot abort.

    pyarrow's Parquet and S3 thread pools can still be alive when the interpreter runs
    C++ static destructors, and then abort a finished process with "terminate called
    without an active exception" (exit 134; apache/arrow#34314, #39162) — about one
    ``mimscale status`` in six on an S3 store. So the process exits the way the
    interpreter would, minus that last step: wait for non-daemon threads, run the
    ``atexit`` hooks (Ray's shutdown, pyarrow's S3 finalization, logging), flush, then
    ``os._exit`` with the verb's code.
    """
    code = main()
    exit_now(code)


def exit_now(code: int) -> None:
    """Leave as the interpreter would, without running C++ static destructors."""
    import atexit
    import os
    import threading

    sys.stdout.flush()
    sys.stderr.flush()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
