"""Can validation loss pick models without fine-tuning? Correlations, a linear fit, rankings.

All functions are pure: cells in, plain dicts of floats out (``None`` where a number is
undefined), so they go straight into ``fits.json``.

- Correlation of ``val_loss`` with ``finetune_top1``: Pearson, Spearman and Kendall (tau-b),
  each with an interval chosen by the group's size (:mod:`analysis.intervals`), overall,
  per model, per length, and split into the cells of overfitting and of non-overfitting
  (model, data) pairs. Groups with fewer than ``MIN_POINTS`` cells, or a constant column,
  are skipped with the reason.
- A least-squares line top-1 = intercept + slope · val_loss with the leave-one-out mean
  absolute prediction error in points (closed form through the hat matrix).
- Ranking agreement: within a group of comparable cells, does the lowest validation loss
  pick the cell with the best fine-tuned top-1? The regret is the top-1 given up, in points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.intervals import BOOTSTRAP_MIN_N, bootstrap_interval, fisher_interval
from analysis.table import group_key

log = logging.getLogger(__name__)

MIN_POINTS = 3
N_RESAMPLES = 2000
CONFIDENCE = 0.95
X, Y = "val_loss", "finetune_top1"


# Each statistic maps the paired data (x, y) to a function of bootstrap *indices*
# (shape (..., n)), so resampling draws indices once and every statistic is vectorised.
Statistic = Callable[[np.ndarray, np.ndarray], Callable[..., np.ndarray]]


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xm = x - x.mean(axis=axis, keepdims=True)
    ym = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = (xm * ym).sum(axis=axis)
        return num / np.sqrt((xm * xm).sum(axis=axis) * (ym * ym).sum(axis=axis))


def _pearson_of(x: np.ndarray, y: np.ndarray) -> Callable[..., np.ndarray]:
    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return _pearson(x[idx], y[idx], axis=axis)

    return statistic


def _spearman_of(x: np.ndarray, y: np.ndarray) -> Callable[..., np.ndarray]:
    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = stats.rankdata(x[idx], axis=axis), stats.rankdata(y[idx], axis=axis)
        return _pearson(*ranks, axis=axis)

    return statistic


def _kendall_of(x: np.ndarray, y: np.ndarray) -> Callable[..., np.ndarray]:
    """Kendall's tau-b of a resample from the pair signs of the original points.

    With c the multiplicity of each point in a resample and s_ij = sign(x_i - x_j),
    the tau-b numerator is cᵀ (s ∘ t) c and the tie-corrected denominator
    sqrt(cᵀ|s|c · cᵀ|t|c): matrix products instead of n² comparisons per resample.
    """
    n = len(x)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    concordance, untied_x, untied_y = sx * sy, sx * sx, sy * sy

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(idx, axis, -1)
        flat = idx.reshape(-1, idx.shape[-1])
        offsets = n * np.arange(len(flat))[:, None]
        counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * n)
        counts = counts.reshape(len(flat), n).astype(float)

        def form(matrix: np.ndarray) -> np.ndarray:
            return ((counts @ matrix) * counts).sum(axis=-1)

        with np.errstate(invalid="ignore", divide="ignore"):
            tau = form(concordance) / np.sqrt(form(untied_x) * form(untied_y))
        return tau.reshape(idx.shape[:-1])

    return statistic


# name -> (bootstrap statistic factory, scipy test for the estimate and p-value)
CORRELATIONS: dict[str, tuple[Statistic, Callable[..., Any]]] = {
    "pearson": (_pearson_of, stats.pearsonr),
    "spearman": (_spearman_of, stats.spearmanr),
    "kendall": (_kendall_of, stats.kendalltau),
}


def correlation(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Pearson, Spearman and Kendall correlation of x and y, each with an interval
    (closed form below ``BOOTSTRAP_MIN_N`` cells, bootstrap from there; see
    :mod:`analysis.intervals`).

    Returns ``{"n": n, "pearson": {"r", "p_value", "ci_low", "ci_high", "ci_method"}, …}``,
    or ``{"n": n, "skipped": reason}`` when the correlation is undefined.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < MIN_POINTS:
        return {"n": n, "skipped": f"only {n} cells (need {MIN_POINTS})"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "skipped": "constant val_loss or top-1"}
    out: dict[str, Any] = {"n": n}
    for name, (statistic, test) in CORRELATIONS.items():
        r = float(test(x, y).statistic)
        if n >= BOOTSTRAP_MIN_N:
            lo, hi, method = bootstrap_interval(
                x, y, statistic, seed=seed, n_resamples=n_resamples, confidence=confidence
            )
        else:
            lo, hi, method = fisher_interval(name, r, n, confidence)
        out[name] = {
            "r": r,
            "p_value": float(test(x, y).pvalue),
            "ci_low": lo,
            "ci_high": hi,
            "ci_method": method,
        }
    return out


def fit_correlations(cells: pd.DataFrame, *, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Correlations overall, per model and per training length (iterations)."""
    cells = cells[np.isfinite(cells[X]) & np.isfinite(cells[Y])]
    out: dict[str, Any] = {"overall": correlation(cells[X], cells[Y], seed=seed, **kwargs)}
    for key, label in (("model", "by_model"), ("iterations", "by_iterations")):
        out[label] = {
            group_key(value): correlation(group[X], group[Y], seed=seed, **kwargs)
            for value, group in cells.groupby(key, sort=False)
        }
    skipped = [
        f"{label.removeprefix('by_')} {name}: {res['skipped']}"
        for label in ("by_model", "by_iterations")
        for name, res in out[label].items()
        if "skipped" in res
    ]
    if "skipped" in out["overall"]:
        skipped.insert(0, f"overall: {out['overall']['skipped']}")
    for line in skipped:
        log.info("correlation skipped for %s", line)
    out["skipped"] = skipped
    return out


def split_correlation(
    cells: pd.DataFrame, overfit_pairs: set[tuple[str, str]], *, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """The correlation within the cells of overfitting (model, data) pairs and within the
    rest: the paper's finding that val loss tracks top-1 more closely without overfitting."""
    cells = cells[np.isfinite(cells[X]) & np.isfinite(cells[Y])]
    pair = pd.Series(list(zip(cells["model"], cells["data"], strict=True)), index=cells.index)
    inside = pair.isin(overfit_pairs)
    return {
        "rule": "cells of the (model, data) pairs flagged in overfitting.by_model_data",
        "overfitting": correlation(cells.loc[inside, X], cells.loc[inside, Y], seed=seed, **kwargs),
        "not_overfitting": correlation(
            cells.loc[~inside, X], cells.loc[~inside, Y], seed=seed, **kwargs
        ),
    }


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least-squares line y = intercept + slope·x with leave-one-out MAE of y."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < MIN_POINTS or np.ptp(x) == 0:
        return {"n": n, "skipped": f"{n} cells, need {MIN_POINTS} with distinct val_loss"}
    design = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    # Leave-one-out residuals of least squares: e_i / (1 - h_ii), h = X (XᵀX)⁻¹ Xᵀ.
    hat = np.einsum("ij,jk,ik->i", design, np.linalg.inv(design.T @ design), design)
    loo = resid / (1.0 - hat)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "n": n,
        "intercept": float(coef[0]),
        "slope": float(coef[1]),
        "r2": 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else None,
        "residual_sd": float(np.sqrt((resid**2).sum() / (n - 2))),
        "loo_mae": float(np.abs(loo).mean()),
        "loo_max_abs_error": float(np.abs(loo).max()),
        # for the band of the fitted mean: yhat ± t(n-2)·sd·sqrt(1/n + (x - x_mean)²/sxx)
        "x_mean": float(x.mean()),
        "sxx": float(((x - x.mean()) ** 2).sum()),
        "x_range": [float(x.min()), float(x.max())],
    }


def line_band(fit: dict[str, Any], xs: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Half-width of the confidence band of a ``linear_fit`` line's mean at ``xs``."""
    t = float(stats.t.ppf(0.5 + confidence / 2.0, fit["n"] - 2))
    lever = 1.0 / fit["n"] + (xs - fit["x_mean"]) ** 2 / fit["sxx"]
    return t * fit["residual_sd"] * np.sqrt(lever)


def fit_linear(cells: pd.DataFrame) -> dict[str, Any]:
    """The top-1-on-val-loss line overall and per model."""
    cells = cells[np.isfinite(cells[X]) & np.isfinite(cells[Y])]
    return {
        "overall": linear_fit(cells[X], cells[Y]),
        "by_model": {
            group_key(m): linear_fit(group[X], group[Y])
            for m, group in cells.groupby("model", sort=False)
        },
    }


# grouping name -> the columns held fixed; the lowest val loss picks among the rest
RANKING_GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model",),
    "model_data": ("model", "data"),
    "model_iterations": ("model", "iterations"),
}


def ranking_agreement(cells: pd.DataFrame) -> dict[str, Any]:
    """How often the lowest validation loss picks the best fine-tuned cell.

    For each grouping (``model``: pick among all data × length of a model; ``model_data``:
    pick a length; ``model_iterations``: pick a data set), every group of two or more cells
    counts a hit when the cell with the lowest val loss also has the best top-1.
    """
    cells = cells[np.isfinite(cells[X]) & np.isfinite(cells[Y])]
    out: dict[str, Any] = {}
    for name, keys in RANKING_GROUPS.items():
        groups = []
        for values, group in cells.groupby(list(keys), sort=False):
            if len(group) < 2:
                continue
            picked = group.loc[group[X].idxmin()]
            best = group.loc[group[Y].idxmax()]
            regret = float(best[Y] - picked[Y])
            groups.append(
                {
                    **{k: group_key(v) for k, v in zip(keys, np.atleast_1d(values), strict=True)},
                    "n": len(group),
                    "picked_cell": picked["cell_id"],
                    "best_cell": best["cell_id"],
                    "hit": regret <= 1e-9,
                    "regret_points": regret,
                }
            )
        hits = sum(g["hit"] for g in groups)
        out[name] = {
            "n_groups": len(groups),
            "hits": hits,
            "hit_rate": hits / len(groups) if groups else None,
            "mean_regret_points": float(np.mean([g["regret_points"] for g in groups]))
            if groups
            else None,
            "groups": groups,
        }
    return out
