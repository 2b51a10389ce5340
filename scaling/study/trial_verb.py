"""``mimscale trial CELL.toml``: one cell in a plain process, no Ray (for debugging).

``mimscale run`` writes ``stages/<kind>/<id>/stage.toml`` (the resolved cell) beside
every stage's results; ``mimscale trial`` runs that cell's two stages (pre-training,
then fine-tuning) from such a file, or one written by hand, into a store. A stage
already complete there is read back, not rerun; an interrupted one resumes.
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
    p.add_argument(
        "cell",
        type=Path,
        help="cell file (stages/<kind>/<id>/stage.toml of a study, or written by hand)",
    )
    p.add_argument(
        "-o",
        "--out",
        help="results store (default: the study directory holding the cell file, else runs/trials)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run_trial_command)


def default_store(cell_file: Path) -> str:
    """The study directory holding ``stages/<kind>/<id>/stage.toml``, else runs/trials."""
    parent = cell_file.resolve().parent
    if parent.parent.parent.name == "stages":
        return str(parent.parent.parent.parent)
    return str(Path("runs/trials").resolve())


def run_trial_command(args: argparse.Namespace) -> int:
    from scaling.cell.run import run_trial
    from scaling.config.identity import cell_id, finetune_id, manifest_digests, pretrain_id
    from scaling.config.load import load_cell
    from scaling.study.store import ResultStore

    cell = load_cell(args.cell, args.overrides)
    store = ResultStore(args.out or default_store(args.cell))
    digests = manifest_digests(cell)
    stages = [("pretrain", pretrain_id(cell, digests))]
    if cell.finetune.enabled:
        stages.append(("finetune", finetune_id(cell, digests)))
    if all(store.stage_complete(kind, stage_id) for kind, stage_id in stages):
        print(f"cell {cell_id(cell, digests)} is complete in {store.uri}; nothing to do")
        return 0
    row = run_trial(cell, store)
    top1 = row.get("finetune_top1")
    print(
        f"cell {row['cell_id']}: {row['model']} on {row['data']}, "
        f"{row['iterations']} iterations: train_loss {row['train_loss']:.4f}, "
        f"val_loss {row['val_loss']:.4f}, top-1 {'-' if top1 is None else f'{top1:.2f}'}, "
        f"{row['wall_s']:.0f} s → {store.uri}"
    )
    return 0
