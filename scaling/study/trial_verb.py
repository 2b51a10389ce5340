"""``mimscale trial CELL.toml``: one cell in a plain process, no Ray (for debugging).

``mimscale run`` writes ``cells/<id>/cell.toml`` beside every cell's results;
``mimscale trial`` reruns such a file (or one written by hand) into a store.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trial",
        help="run one cell (pre-train, val curve, fine-tune) in this process, without Ray",
        description="Run one cell in this process. A finished cell is not rerun; an "
        "interrupted one resumes from its last checkpoint.",
    )
    p.add_argument("cell", type=Path, help="cell file (cells/<id>/cell.toml of a study)")
    p.add_argument(
        "-o",
        "--out",
        help="results store (default: the study directory holding the cell file, else runs/trials)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run_trial_command)


def default_store(cell_file: Path) -> str:
    parent = cell_file.resolve().parent
    if parent.parent.name == "cells":
        return str(parent.parent.parent)
    return str(Path("runs/trials").resolve())


def run_trial_command(args: argparse.Namespace) -> int:
    from scaling.cell.run import run_trial
    from scaling.config.identity import cell_id as id_of
    from scaling.config.identity import manifest_digests
    from scaling.config.load import load_cell
    from scaling.study.store import ResultStore

    cell = load_cell(args.cell, args.overrides)
    store = ResultStore(args.out or default_store(args.cell))
    cell_id = id_of(cell, manifest_digests(cell))
    if store.is_complete(cell_id):
        print(f"cell {cell_id} is complete in {store.uri}; nothing to do")
        return 0
    row = run_trial(cell, store, cell_id)
    print(
        f"cell {cell_id}: {row['model']} on {row['data']}, {row['iterations']} iterations: "
        f"train_loss {row['train_loss']:.4f}, val_loss {row['val_loss']:.4f}, "
        f"top-1 {row['finetune_top1']}, {row['wall_s']:.0f} s → {store.uri}"
    )
    return 0
