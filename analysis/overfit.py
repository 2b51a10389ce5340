"""Overfitting: does validation loss get worse with more pre-training?

Two views, both per (model, data):

- **Across cells** (lengths): the mean val loss of the cells at each training length.
  It *rises with length* when the longest length ends above the best one by more than
  ``rel_tol`` (relative). The best length is the one with the lowest val loss.
- **Along a curve**: the pre-training val-loss curve of the longest cell. The rule, robust
  to a single noisy evaluation:

  1. smooth the val points with a centred running median of ``window`` points;
  2. the turn is the step of the smoothed minimum L*;
  3. the curve *turned* when at least ``patience`` points follow the minimum and the last
     ``patience`` smoothed points all lie above L* · (1 + rel_tol), i.e. the rise lasts
     to the end of training;
  4. the training loss *keeps falling* when its smoothed value at the end is below its
     smoothed value at the turn.

  The curve *overfits* when it turned while the training loss kept falling (or, with no
  training curve logged, when it turned).

Overfitting cells (marked in the figures) are those past the best length of a (model,
data) whose val loss rises with length, and those whose own curve overfits.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from analysis.table import group_key

log = logging.getLogger(__name__)

REL_TOL = 0.002
PATIENCE = 2
WINDOW = 3


def smooth(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Centred running median (shorter at the ends); one outlying evaluation does not move it."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values
    padded = np.pad(values, ((window - 1) // 2, window // 2), constant_values=np.nan)
    return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, window), axis=-1)


def find_turn(
    steps: np.ndarray,
    val: np.ndarray,
    *,
    rel_tol: float = REL_TOL,
    patience: int = PATIENCE,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Where a validation-loss curve turns upward for good (see the module docstring)."""
    steps, val = np.asarray(steps, dtype=float), np.asarray(val, dtype=float)
    smoothed = smooth(val, window)
    # The median ties a sharp minimum with its neighbour; the raw value breaks the tie.
    ties = np.flatnonzero(smoothed == smoothed.min())
    m = int(ties[np.argmin(val[ties])])
    low = float(smoothed[m])
    threshold = low + rel_tol * abs(low)
    after = smoothed[m + 1 :]
    turned = len(after) >= patience and bool(np.all(after[-patience:] > threshold))
    above = np.nonzero(after > threshold)[0]
    return {
        "turned": turned,
        "turn_step": group_key(steps[m]) if turned else None,
        "rise_step": group_key(steps[m + 1 + above[0]]) if turned else None,
        "min_val_loss": low,
        "min_step": group_key(steps[m]),
        "final_val_loss": float(smoothed[-1]),
        "rise": float(smoothed[-1] - low),
        "rel_rise": float((smoothed[-1] - low) / abs(low)) if low else None,
    }


def train_keeps_falling(
    steps: np.ndarray, train: np.ndarray, turn_step: float, window: int = WINDOW
) -> bool | None:
    """Is the smoothed training loss at the end below its value at ``turn_step``?"""
    steps, smoothed = np.asarray(steps, dtype=float), smooth(train, window)
    at_turn = smoothed[steps <= turn_step]
    if len(at_turn) == 0 or steps[-1] <= turn_step:
        return None
    return bool(smoothed[-1] < at_turn[-1])


Series = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted by step


def curve_overfit(
    val: Series | None,
    train: Series | None,
    *,
    rel_tol: float = REL_TOL,
    patience: int = PATIENCE,
    window: int = WINDOW,
) -> dict[str, Any] | None:
    """Turn detection on one cell's pre-training val (and train) loss curve."""
    if val is None or len(val[0]) < 2:
        return None
    out = find_turn(*val, rel_tol=rel_tol, patience=patience, window=window)
    out["train_falling"] = None
    if out["turned"] and train is not None and len(train[0]) >= 2:
        out["train_falling"] = train_keeps_falling(*train, out["turn_step"], window)
    out["overfits"] = out["turned"] and out["train_falling"] is not False
    return out


def loss_series(curves: pd.DataFrame) -> dict[tuple[str, str], Series]:
    """(cell_id, split) -> (steps, mean loss at each step) from the long curves table."""
    points = curves.groupby(["cell_id", "split", "step"], sort=True)["value"].mean()
    return {
        (str(cell_id), str(split)): (
            part.index.get_level_values("step").to_numpy(dtype=float),
            part.to_numpy(dtype=float),
        )
        for (cell_id, split), part in points.groupby(level=["cell_id", "split"], sort=False)
    }


def fit_overfitting(
    cells: pd.DataFrame,
    curves: pd.DataFrame | None,
    *,
    rel_tol: float = REL_TOL,
    patience: int = PATIENCE,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Overfitting per (model, data) across lengths and along curves; see the module doc."""
    by_cell: dict[str, dict[str, Any]] = {}
    series = loss_series(curves) if curves is not None else {}
    for cell_id in dict.fromkeys(key[0] for key in series):
        res = curve_overfit(
            series.get((cell_id, "val")),
            series.get((cell_id, "train")),
            rel_tol=rel_tol,
            patience=patience,
            window=window,
        )
        if res is not None:
            by_cell[cell_id] = {"cell_id": cell_id, **res}
    records, flagged = [], set()
    for (model, data), group in cells.groupby(["model", "data"], sort=False):
        record, past_best = _by_length(group, rel_tol)
        flagged |= past_best
        with_curve = group[group["cell_id"].isin(by_cell)]
        curve = None
        if not with_curve.empty:
            longest = with_curve.loc[with_curve["iterations"].idxmax(), "cell_id"]
            curve = by_cell[longest]
        record["curve"] = curve
        record["overfits"] = record["rises_with_length"] or bool(curve and curve["overfits"])
        records.append({"model": model, "data": data, **record})
    flagged |= {cid for cid, res in by_cell.items() if res["overfits"]}
    n = sum(r["overfits"] for r in records)
    log.info("overfitting in %d of %d (model, data) pairs", n, len(records))
    return {
        "settings": {"rel_tol": rel_tol, "patience": patience, "window": window},
        "by_model_data": records,
        "by_curve": list(by_cell.values()),
        "overfitting_cells": sorted(flagged),
    }


def _by_length(group: pd.DataFrame, rel_tol: float) -> tuple[dict[str, Any], set[str]]:
    valid = group[np.isfinite(group["val_loss"])]
    per_length = valid.groupby("iterations")["val_loss"].mean().sort_index()
    top1 = group.groupby("iterations")["finetune_top1"].mean().reindex(per_length.index)
    record: dict[str, Any] = {
        "n_train_images": group_key(group["n_train_images"].iloc[0]),
        "iterations": [group_key(i) for i in per_length.index],
        "val_loss": per_length.tolist(),
        "finetune_top1": [None if np.isnan(v) else float(v) for v in top1],
        "best_iterations": None,
        "best_top1_iterations": None,
        "rises_with_length": False,
        "rise": None,
        "rel_rise": None,
    }
    if per_length.empty:
        return record, set()
    best = per_length.idxmin()
    low, last = float(per_length.min()), float(per_length.iloc[-1])
    record["best_iterations"] = group_key(best)
    if top1.notna().any():
        record["best_top1_iterations"] = group_key(top1.idxmax())
    record["rise"] = last - low
    record["rel_rise"] = (last - low) / abs(low) if low else None
    rises = len(per_length) >= 2 and last > low + rel_tol * abs(low)
    record["rises_with_length"] = bool(rises)
    past = set(group.loc[group["iterations"] > best, "cell_id"]) if rises else set()
    return record, past
