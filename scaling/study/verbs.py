"""``mimscale plan | run | status STUDY``: a study from its TOML file to its results.

``plan`` prints every cell with its derived quantities (no Ray, no GPU);
``run`` (its flow in :mod:`scaling.study.run_verb`) checks everything, runs the stages
that are not complete on Ray Tune, then writes the tables and the report; ``status``
prints the table of stages from the store. Nothing heavy is imported at module level, so
``mimscale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.argtypes import number_in
from scaling.study.run_verb import _job_order, run_command

if TYPE_CHECKING:
    from scaling.config.schema import StudyConfig

log = logging.getLogger(__name__)


def study_parser(
    sub: argparse._SubParsersAction, name: str, help_: str, description: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=description)
    p.add_argument("study", type=Path, help="study file (studies/*.toml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key, e.g. --set pretrain.batch_size=1024 (repeatable)",
    )
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = study_parser(
        sub,
        "plan",
        "print every cell of a study with params, images, epochs, FLOPs, GPU-hours",
        "Validate a study and print its cells and totals, without Ray and without a GPU. "
        "FLOPs come from torch's FlopCounterMode on the meta device; GPU-hours assume "
        "the stated utilization of the stated peak.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--mfu", type=float, default=None, help="assumed MFU (default 0.40)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s per GPU (default 989, an H100 SXM's dense bf16)",
    )
    p.set_defaults(func=plan_command)
    _register_run(sub)
    p = study_parser(
        sub,
        "status",
        "print the cells of a study: done, running, stopped, failed, pending",
        "Print the state of every cell of a study from its results store, with the latest "
        "validation loss; runs nothing.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=status_command)


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = study_parser(
        sub,
        "run",
        "run a study's grid on Ray (resumes; a grown study runs only its new cells)",
        "Validate the study, build the demo data if it asks for it, run every cell that is "
        "not complete as a Ray Tune trial, then write cells.parquet, curves.parquet and the "
        "report under output_dir.",
    )
    p.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (default: RAY_ADDRESS, else start a local instance)",
    )
    p.add_argument(
        "--progress-interval",
        type=number_in(float, 0.1, 86400),
        default=10.0,
        metavar="S",
        help="seconds between progress tables (default 10)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the analysis report")
    p.add_argument(
        "--connect-timeout",
        type=number_in(float, 1, 86400),
        default=60.0,
        metavar="S",
        help="seconds to reach a cluster given by --address / RAY_ADDRESS (default 60)",
    )
    p.add_argument(
        "--wait",
        nargs="?",
        type=number_in(float, 0, 31 * 86400),
        const=-1.0,
        default=None,
        metavar="S",
        help="if another run holds the study's lock, wait for it (at most S seconds) "
        "instead of refusing",
    )
    p.set_defaults(func=run_command)


def _load(args: argparse.Namespace) -> StudyConfig:
    from scaling.config.load import load_study

    return load_study(args.study, args.overrides)


def plan_command(args: argparse.Namespace) -> int:
    from scaling.errors import UsageError
    from scaling.study.plan import DEFAULT_MFU, H100_BF16_TFLOPS, format_plan, plan_study

    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    peak = H100_BF16_TFLOPS if args.peak_tflops is None else args.peak_tflops
    if not 0 < mfu <= 1:  # NaN fails it too
        raise UsageError(f"--mfu must be in (0, 1], got {mfu}")
    if not 0 < peak < float("inf"):
        raise UsageError(f"--peak-tflops must be a finite number > 0, got {peak}")
    plan = plan_study(_load(args), mfu=mfu, peak_tflops=peak)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(format_plan(plan))
    if plan.memory_problems:  # the whole plan is printed first: it shows what to change
        n = len(plan.memory_problems)
        raise UsageError(
            f"{plan.source}: resources.gpu_memory_gb: {n} cell{'s' * (n > 1)} cannot fit the "
            f"GPU memory; first: {plan.memory_problems[0]}"
        )
    return 0


def status_command(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from scaling.config.identity import cell_digests, study_subsets
    from scaling.study.live import format_totals, study_totals
    from scaling.study.stages import build_graph
    from scaling.study.status import format_status, study_status
    from scaling.study.store import ResultStore

    study = _load(args)
    subsets = study_subsets(study)
    missing = sorted(n for n, s in subsets.items() if s.digest is None)
    cells = study.cells()
    pairs = [(c, d) for c in cells if (d := cell_digests(c, subsets)) is not None]
    graph = build_graph(pairs, share_prefix=study.grid.share_prefix)
    rows = study_status(ResultStore(study.output_dir, set_aside=False), graph)
    if args.json:
        report = {
            "study": study.name,
            "stages": [asdict(r) for r in rows],
            "cells": [{"cell_id": ft or pt, "pretrain_id": pt, "finetune_id": ft}
                      for _, pt, ft in graph.cells],
            "missing_manifests": missing,
            "totals": asdict(study_totals(rows)),
        }  # fmt: skip
        print(json.dumps(report, indent=2))
        return 0
    print(f"study {study.name} → {study.output_dir}")
    if missing:
        print(
            f"{len(cells) - len(pairs)} cells have no stages yet: missing manifests "
            f"{', '.join(missing)}"
        )
    print(format_status(rows))
    print(format_totals(study_totals(rows)))  # GPU-hours so far, ETA from measured pace
    return 0


__all__ = ["_job_order", "plan_command", "register", "run_command", "status_command"]
