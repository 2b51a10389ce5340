"""The one command-line entry point: ``mimscale <verb> …``.

Verbs follow the flow (subsets → plan/run/status/trial → analyze). Each stage
registers its verbs from a light module that imports nothing heavy at import
time, so ``mimscale --help`` starts fast; torch, ray and plotly load only inside
the verb that needs them.

A user-facing error is any exception with an ``exit_code`` attribute: its
message is printed as ``error: …`` and the process exits with that code (2 for
bad input). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that define ``register(subparsers) -> None``; each verb sets
# ``func(args) -> int`` through ``set_defaults``.
VERB_MODULES = ("subsets.cli", "scaling.cli_study", "scaling.cli_trial", "analysis.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimscale",
        description="Data-scaling studies of masked image modeling (SimMIM): "
        "build subsets, plan and run model × data × length grids, analyze them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # a stage not built yet
        module.register(sub)
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
    except Exception as err:  # user errors carry an exit code
        code = getattr(err, "exit_code", None)
        if code is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
