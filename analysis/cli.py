"""The ``mimscale analyze`` verb. Imports nothing heavy until the verb runs."""

from __future__ import annotations

import argparse
from typing import Any

from scaling.argtypes import number_in

# Mirrors analysis.validate.CELL_COLUMNS, which this light module cannot import (pandas).
REQUIRED_COLUMNS = (
    "model", "params_m", "data", "n_train_images", "iterations", "val_loss", "finetune_top1",
)  # fmt: skip
OPTIONAL_COLUMNS = ("cell_id", "seed", "status", "train_loss", "finetune_top5")


def register(subparsers: Any) -> None:
    """Add ``analyze`` to the ``mimscale`` command line."""
    parser = subparsers.add_parser(
        "analyze",
        help="fit val-loss/top-1 correlations, overfitting and scaling; write an HTML report",
        description="Analyse a study's results (a directory, or a URI, holding cells.parquet "
        "and curves.parquet) or an external CSV/Parquet table of cells, and write "
        "OUT/report.html (self-contained, works offline) and OUT/fits.json. "
        f"An external table needs the columns {', '.join(REQUIRED_COLUMNS)}; "
        f"optional: {', '.join(OPTIONAL_COLUMNS)} (see `pydoc analysis.table`).",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="study results dir, or a .csv/.parquet table (omit with --reference to "
        "analyse the published table itself)",
    )
    parser.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory")
    parser.add_argument(
        "--png",
        action="store_true",
        help="also write one PNG per figure (needs Chromium: apt-get install chromium, "
        "or BROWSER_PATH=/path/to/chrome)",
    )
    parser.add_argument(
        "--curves", metavar="TABLE", help="curves table (CSV/Parquet) for an external SOURCE"
    )
    parser.add_argument(
        "--seed", type=number_in(int, 0, 2**32 - 1), default=0, help="bootstrap seed (default 0)"
    )
    parser.add_argument(
        "--reference",
        metavar="NAME",
        help="published results to compare with: 'paper' (Xie et al. 2023, 63 cells); "
        "overlaid on the figures, matching cells compared in a table",
    )
    parser.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """Write the report; errors are AnalysisError (exit 2), printed by the main CLI."""
    from analysis.report import write_report

    report = write_report(
        args.source,
        args.out,
        png=args.png,
        curves=args.curves,
        seed=args.seed,
        reference_name=args.reference,
    )
    print(report)
    return 0
