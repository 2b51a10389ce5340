"""Repeated rows and replicate seeds of one cell.

- **Duplicates**: two complete rows with the same (model, data, iterations) and the same
  seed (or no seed column). When their measurements agree (to 1e-9 relative) they are
  one cell listed twice and are merged with a note; when they disagree the table is
  ambiguous and loading stops with both lines named (add a ``seed`` column if they are
  replicates).
- **Replicates**: rows of one (model, data, iterations) with different seeds. They become
  one cell whose measurements are the means over seeds, with the sample sd of each
  (``val_loss_sd`` …) and ``n_seeds``; correlations and fits then use the cell means, so
  replicates are not counted as independent points.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.table import WHERE, group_key

log = logging.getLogger(__name__)

MEASURED = ("val_loss", "finetune_top1", "train_loss", "finetune_top5")
AVERAGED = (*MEASURED, "epochs_seen", "pretrain_flops", "gpu_hours", "wall_s")
# recipe columns that tell two runs of one (model, data, length) apart when present
RECIPE = ("batch_size", "mask_ratio", "method", "target")


def cell_key(cells: pd.DataFrame) -> list[str]:
    """The columns that name one cell (without the seed)."""
    return ["model", "data", "iterations", *(c for c in RECIPE if c in cells)]


def _agree(group: pd.DataFrame) -> str | None:
    """The first measured column whose values differ within the group, or None."""
    for col in MEASURED:
        if col not in group:
            continue
        v = group[col].to_numpy(dtype=float)
        if not np.all(np.isclose(v, v[0], rtol=1e-9, atol=0.0, equal_nan=True)):
            return col
    return None


def merge_duplicates(cells: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[str]]:
    """Merge exact repeats of a cell (with a note); stop on repeats that disagree."""
    key = cell_key(cells) + (["seed"] if "seed" in cells else [])
    dup = cells.duplicated(key, keep=False)
    if not dup.any():
        return cells, []
    from analysis.validate import places

    drop, merged = [], []
    for values, group in cells[dup].groupby(key, sort=False, dropna=False):
        col = _agree(group)
        what = ", ".join(f"{k}={group_key(v)}" for k, v in zip(key, values, strict=True))
        if col is not None:
            got = " vs ".join(f"{x:g}" for x in group[col])
            raise AnalysisError(
                f"{name}: {places(cells, group.index)}: the same cell ({what}) twice with "
                f"different {col} ({got}); remove one, or add a 'seed' column if they are "
                "replicates"
            )
        drop += list(group.index[1:])
        merged.append(places(cells, group.index))
    note = (
        f"{len(drop)} rows repeated another row exactly and were merged into it "
        f"({'; '.join(merged[:5])})"
    )
    log.info("%s: %s", name, note)
    return cells.drop(index=drop), [note]


def aggregate_replicates(
    cells: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, str], int, list[str]]:
    """Cells with several seeds become their means (see the module docstring).

    Returns the cells, a map from every input cell_id to its cell's id, the most seeds
    of a cell, and notes.
    """
    identity = {str(c): str(c) for c in cells["cell_id"]}
    key = cell_key(cells)
    sizes = cells.groupby(key, sort=False, dropna=False)["cell_id"].transform("size")
    if "seed" not in cells or sizes.max() <= 1:
        return cells, identity, 1, []
    rows, id_map = [], {}
    for _, group in cells.groupby(key, sort=False, dropna=False):
        row = group.iloc[0].copy()
        n = len(group)
        if n > 1:
            row["cell_id"] = f"{row['model']}/{row['data']}/{group_key(row['iterations'])}"
            if "method" in group and pd.notna(row["method"]):
                row["cell_id"] += f"/{row['method']}"
            row[WHERE] = group[WHERE].iloc[0] if WHERE in group else None
        for col in AVERAGED:
            if col in group:
                row[col] = group[col].mean()
        for col in MEASURED:
            if col in group:
                row[f"{col}_sd"] = group[col].std(ddof=1) if n > 1 else np.nan
        row["n_seeds"] = n
        row["seed"] = np.nan if n > 1 else row["seed"]
        id_map.update({str(c): str(row["cell_id"]) for c in group["cell_id"]})
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    most = int(out["n_seeds"].max())
    note = (
        f"{len(cells)} complete runs are replicates of {len(out)} cells (up to {most} seeds): "
        "each cell is the mean over its seeds (± sample sd); correlations and fits use "
        "the cell means"
    )
    return out, id_map, most, [note]
