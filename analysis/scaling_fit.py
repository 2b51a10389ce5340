"""Scaling: top-1 and validation loss versus data size and model size.

- Series: per (model, length), top-1 and val loss against the number of training images,
  with a least-squares slope per decade of data; per data set, the best top-1 over lengths
  against model size (parameters, millions).
- A saturating power law y(D) = E + A · D^(-alpha) (:mod:`analysis.power_law`), fitted
  to the val loss and to the top-1 error (100 - top-1) of every (model, length).
- Data sets of another distribution: the data-size series and fits use the data names of
  the main ``<prefix>-<pct>pct`` family (the prefix with most names, e.g. ``in1k-10pct``
  … ``in1k-100pct``); other names (``in22k``) are not a larger subset of the same
  distribution, so they are kept apart (``other_data`` of each series), not fitted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from analysis.power_law import MIN_DOF, fit_power_law, power_law, power_law_band
from analysis.table import group_key

__all__ = ["MIN_DOF", "fit_power_law", "fit_scaling", "power_law", "power_law_band"]

log = logging.getLogger(__name__)

FAMILY = re.compile(r"^(?P<prefix>.+)-(?P<pct>\d+(?:\.\d+)?)pct$")


def data_family(names: list[str]) -> dict[str, Any]:
    """Which data names form the main fraction family and which are kept apart."""
    prefixes = [m.group("prefix") for m in map(FAMILY.match, names) if m]
    if not prefixes:
        return {"prefix": None, "fitted": list(names), "apart": [], "rule": "no family"}
    prefix = max(dict.fromkeys(prefixes), key=prefixes.count)
    fitted = [n for n in names if (m := FAMILY.match(n)) and m.group("prefix") == prefix]
    apart = [n for n in names if n not in fitted]
    return {
        "prefix": prefix,
        "fitted": fitted,
        "apart": apart,
        "rule": f"data-size series and fits use the {prefix}-<pct>pct subsets; "
        "other data names are another distribution: shown apart, not fitted",
    }


def slope_per_decade(x: np.ndarray, y: np.ndarray) -> float | None:
    """Least-squares change of y per tenfold increase of x."""
    x, y = np.log10(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return None
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def fit_scaling(cells: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, Any]:
    """Scaling series (vs data per model and length, vs model size per data) and fits."""
    names = cells.sort_values("n_train_images")["data"].drop_duplicates().tolist()
    family = data_family(names)
    vs_data = [
        _data_series(model, iterations, group, family, confidence)
        for (model, iterations), group in cells.groupby(["model", "iterations"], sort=False)
    ]
    n_fit = sum("skipped" not in e["val_loss_fit"] for e in vs_data)
    log.info("power-law fits for %d of %d (model, length) series", n_fit, len(vs_data))
    return {
        "data_family": family,
        "vs_data": vs_data,
        "vs_model_size": [
            _model_series(data, group, data in family["apart"])
            for data, group in cells.groupby("data", sort=False)
        ],
    }


def _data_series(
    model: str, iterations: Any, group: pd.DataFrame, family: dict[str, Any], confidence: float
) -> dict[str, Any]:
    cols = ["finetune_top1", "val_loss"]
    apart = group[group["data"].isin(family["apart"])]
    points = group[~group.index.isin(apart.index)]
    points = points.groupby("n_train_images")[cols].mean().sort_index()
    d = points.index.to_numpy(dtype=float)
    entry: dict[str, Any] = {
        "model": model,
        "iterations": group_key(iterations),
        "n_train_images": [group_key(v) for v in d],
        "finetune_top1": _floats(points["finetune_top1"]),
        "val_loss": _floats(points["val_loss"]),
        "top1_per_decade": slope_per_decade(d, points["finetune_top1"]),
        "val_loss_per_decade": slope_per_decade(d, points["val_loss"]),
        "other_data": [
            {
                "data": row["data"],
                "n_train_images": group_key(row["n_train_images"]),
                "finetune_top1": _floats(pd.Series([row["finetune_top1"]]))[0],
                "val_loss": _floats(pd.Series([row["val_loss"]]))[0],
            }
            for _, row in apart.iterrows()
        ],
    }
    for name, y in (
        ("val_loss_fit", points["val_loss"]),
        ("top1_error_fit", 100.0 - points["finetune_top1"]),
    ):
        ok = np.isfinite(y.to_numpy())
        entry[name] = fit_power_law(d[ok], y.to_numpy()[ok], confidence=confidence)
    return entry


def _model_series(data: str, group: pd.DataFrame, apart: bool) -> dict[str, Any]:
    rows = group[np.isfinite(group["finetune_top1"])]
    best = rows.loc[rows.groupby("model", sort=False)["finetune_top1"].idxmax()]
    best = best.sort_values("params_m")
    val = group.groupby("model")["val_loss"].min().reindex(best["model"])
    return {
        "data": data,
        "other_distribution": apart,
        "n_train_images": group_key(group["n_train_images"].iloc[0]),
        "model": best["model"].tolist(),
        "params_m": best["params_m"].tolist(),
        "best_top1": best["finetune_top1"].tolist(),
        "best_iterations": [group_key(v) for v in best["iterations"]],
        "min_val_loss": _floats(val),
        "top1_per_decade": slope_per_decade(best["params_m"], best["finetune_top1"]),
    }


def _floats(values: pd.Series) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
