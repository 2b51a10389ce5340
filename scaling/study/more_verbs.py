"""``mimscale logs | export STUDY``: read a stage's log; take the trained encoders away.

``logs STUDY ID [--follow]`` prints the log of a stage, or of both stages of a cell, from
the results store (:mod:`scaling.study.logs`). ``export STUDY [--cell ID | --where k=v
…] --out DIR`` writes each selected pre-trained encoder and fine-tuned classifier as
safetensors with the config timm loads it by (:mod:`scaling.study.export`). Neither runs
anything; nothing heavy is imported until the verb runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.study.verbs import study_parser

if TYPE_CHECKING:
    from scaling.config.schema import StudyConfig
    from scaling.study.stages import StageGraph


def register(sub: argparse._SubParsersAction) -> None:
    p = study_parser(
        sub,
        "logs",
        "print a stage's log (or both stages' of a cell) from the results store",
        "Print the log a stage wrote next to its results (rank 0; every rank's when one "
        "crashed). ID: a stage id or a cell id from `mimscale status` (a unique prefix will "
        "do).",
    )
    p.add_argument("id", metavar="STAGE_OR_CELL_ID")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the stages end")
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        metavar="S",
        help=argparse.SUPPRESS,
    )
    p.set_defaults(func=logs_command)
    p = study_parser(
        sub,
        "export",
        "write trained encoders (and classifiers) as safetensors for timm",
        "Write each selected cell's pre-trained encoder and fine-tuned classifier as "
        "model.safetensors + config.json, loadable with timm.create_model(architecture, "
        'pretrained=True, pretrained_cfg_overlay={"file": …}, **model_args).',
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cell", metavar="ID", help="one cell (or stage) id, or a prefix")
    which.add_argument(
        "--where",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="cells whose model / data / iterations / seed / method / target match",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write into")
    p.set_defaults(func=export_command)


def study_graph(study: StudyConfig) -> StageGraph:
    """The study's stages, as ``status`` builds them (cells whose manifests exist)."""
    from scaling.config.identity import cell_digests, study_subsets
    from scaling.study.stages import build_graph

    subsets = study_subsets(study)
    pairs = [(c, d) for c in study.cells() if (d := cell_digests(c, subsets)) is not None]
    return build_graph(pairs, share_prefix=study.grid.share_prefix)


def _open(args: argparse.Namespace) -> tuple[StudyConfig, Any, StageGraph]:
    from scaling.config.load import load_study
    from scaling.study.store import ResultStore

    study = load_study(args.study, args.overrides)
    return study, ResultStore(study.output_dir, set_aside=False), study_graph(study)


def logs_command(args: argparse.Namespace) -> int:
    from scaling.errors import UsageError
    from scaling.study.logs import follow, resolve, show

    if not 0 < args.poll <= 60:
        raise UsageError(f"--poll: must be in (0, 60] seconds, got {args.poll}")
    _, store, graph = _open(args)
    refs = resolve(graph, args.id)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if args.follow:
        follow(store, refs, write, poll_s=args.poll)
    else:
        show(store, refs, write)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from scaling.study.export import ExportError, export_study, parse_where, select
    from scaling.study.store import probe_local

    where = parse_where(args.where)  # every check before anything is read or written
    if args.out.exists() and not args.out.is_dir():
        raise ExportError(f"--out {args.out}: is a file, not a folder")
    try:
        probe_local(args.out.absolute())  # a parent that is a file, no permission, read-only
    except OSError as err:
        raise ExportError(f"--out {args.out}: cannot write there ({err})") from None
    _, store, graph = _open(args)
    cells = select(graph, cell_id=args.cell, where=where)
    entries = export_study(store, cells, args.out)
    for e in entries:
        extra = f" + classifier ({e['classifier']})" if e["classifier"] else ""
        print(f"{e['cell_id']}: {e['model']} on {e['data']}, {e['iterations']} steps → "
              f"{e['encoder']}{extra}")  # fmt: skip
    print(f"{len(entries)} cells exported → {args.out / 'index.json'}")
    return 0
