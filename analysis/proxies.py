"""The method as a grouping, and which proxy metric predicts fine-tuned top-1 best.

Losses of different MIM methods are not on one scale (SimMIM's masked L1, MAE's per-patch
normalised MSE, LocalMIM's sum over scales), so with a ``method`` column:

- ``by_method``: the val-loss / top-1 correlations within each method;
- ``across_methods``: one correlation over every cell on *within-method ranks* (each
  cell's val loss and top-1 replaced by their rank among its method's cells, scaled to
  [0, 1]), the only pooled comparison that does not mix scales.

**Proxy ranking.** Every candidate proxy of a cell — the final ``val_loss``, the
``val_loss_slope`` (least-squares slope of the validation loss against the step over the
last ``SLOPE_FRACTION`` of training, from the curves; per 1,000 steps), and each summary
scalar of the representation diagnostics (``diagnostics.parquet``, layer −1 rows: mean
attention distance, entropy, head KL, CKA, query–key NMI) — is scored by how well it
predicts fine-tuned top-1: Spearman ρ and Kendall τ with intervals
(:func:`analysis.fits.correlation`) and the leave-one-out mean absolute error of a linear
fit of top-1 on the proxy (:func:`analysis.fits.linear_fit`). Proxies are ranked by that
error, best first, per method and overall; overall, each proxy is z-scored within its
method first so that one line fits every method. A cell without a proxy's value (no
curve, no diagnostics) is left out of that proxy's scores only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.fits import MIN_POINTS, Y, correlation, linear_fit
from analysis.table import group_key

SLOPE_FRACTION = 0.5
"""The last part of training whose validation losses give the slope."""
DEFAULT_METHOD = "simmim"
"""The method of cells from a table without a ``method`` column (every earlier study)."""


def methods_of(cells: pd.DataFrame) -> pd.Series:
    """Each cell's method (``simmim`` where the table has none)."""
    if "method" not in cells:
        return pd.Series(DEFAULT_METHOD, index=cells.index)
    return cells["method"].fillna(DEFAULT_METHOD).astype(str)


def val_loss_slope(curves: pd.DataFrame | None, fraction: float = SLOPE_FRACTION) -> pd.Series:
    """Per cell_id: slope of val loss vs step (per 1,000 steps) over the last ``fraction``
    of its val points' steps; cells with fewer than two such points are left out."""
    if curves is None or curves.empty:
        return pd.Series(dtype=float)
    val = curves[(curves["split"] == "val") & (curves["metric"] == "loss")]
    out = {}
    for cell_id, points in val.groupby("cell_id", sort=False):
        steps = points["step"].to_numpy(float)
        last = points[steps >= steps.max() * (1.0 - fraction)]
        if last["step"].nunique() >= 2:
            slope = np.polyfit(last["step"].to_numpy(float), last["value"].to_numpy(float), 1)[0]
            out[cell_id] = float(slope) * 1000.0
    return pd.Series(out, dtype=float)


def diagnostic_summaries(diagnostics: pd.DataFrame | None) -> pd.DataFrame:
    """cell_id × summary metric (``diag_<name>``) from a ``diagnostics.parquet`` table."""
    if diagnostics is None or diagnostics.empty:
        return pd.DataFrame()
    summary = diagnostics[diagnostics["layer"] == -1]
    wide = summary.pivot_table(index="cell_id", columns="metric", values="value", aggfunc="mean")
    return wide.rename(columns=lambda m: f"diag_{m}")


def proxy_table(
    cells: pd.DataFrame, curves: pd.DataFrame | None, diagnostics: pd.DataFrame | None
) -> tuple[pd.DataFrame, list[str]]:
    """(cells with ``method`` and every proxy column, the proxy column names)."""
    table = cells[["cell_id", Y, "val_loss"]].copy()
    table["method"] = methods_of(cells)
    table["val_loss_slope"] = table["cell_id"].map(val_loss_slope(curves))
    diag = diagnostic_summaries(diagnostics)
    for col in diag.columns:
        table[col] = table["cell_id"].map(diag[col])
    proxies = ["val_loss", "val_loss_slope", *diag.columns]
    return table, [p for p in proxies if table[p].notna().any()]


def score_proxy(x: pd.Series, y: pd.Series, **kwargs: Any) -> dict[str, Any]:
    """Spearman / Kendall with intervals and the LOO MAE of top-1 on one proxy."""
    ok = np.isfinite(x.to_numpy(float)) & np.isfinite(y.to_numpy(float))
    x, y = x[ok].to_numpy(float), y[ok].to_numpy(float)
    corr = correlation(x, y, **kwargs)
    line = linear_fit(x, y)
    out: dict[str, Any] = {"n": len(x)}
    if "skipped" in corr or "skipped" in line:
        out["skipped"] = corr.get("skipped") or line.get("skipped")
        return out
    out |= {"spearman": corr["spearman"], "kendall": corr["kendall"]}
    out |= {"loo_mae": line["loo_mae"], "slope": line["slope"], "r2": line["r2"]}
    return out


def rank_proxies(table: pd.DataFrame, proxies: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Every proxy's scores, best (lowest LOO MAE) first; skipped proxies last."""
    rows = [{"proxy": p, **score_proxy(table[p], table[Y], **kwargs)} for p in proxies]
    return sorted(rows, key=lambda r: (r.get("loo_mae") is None, r.get("loo_mae") or 0.0))


def _within(table: pd.DataFrame, column: str, how: str) -> pd.Series:
    """``column`` standardised within each method: ``rank`` (to [0, 1]) or ``z``."""

    def one(s: pd.Series) -> pd.Series:
        if how == "rank":
            return (s.rank() - 1) / max(s.notna().sum() - 1, 1)
        sd = s.std(ddof=0)
        return (s - s.mean()) / sd if sd and np.isfinite(sd) else s * np.nan

    return table.groupby("method", sort=False)[column].transform(one)


def fit_methods(
    cells: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    diagnostics: pd.DataFrame | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Method grouping and proxy ranking (see the module docstring) for ``fits.json``."""
    table, proxies = proxy_table(cells, curves, diagnostics)
    table = table[np.isfinite(table[Y].to_numpy(float))]
    methods = list(dict.fromkeys(table["method"]))
    finite = table[np.isfinite(table["val_loss"].to_numpy(float))]
    by_method = {
        group_key(m): correlation(g["val_loss"], g[Y], **kwargs)
        for m, g in finite.groupby("method", sort=False)
    }
    ranks = finite.assign(x=_within(finite, "val_loss", "rank"), y=_within(finite, Y, "rank"))
    pooled = table.copy()
    for p in proxies:
        pooled[p] = _within(table, p, "z")
    return {
        "methods": methods,
        "by_method": by_method,
        "across_methods": correlation(ranks["x"], ranks["y"], **kwargs)
        if len(ranks) >= MIN_POINTS
        else {"n": len(ranks), "skipped": f"only {len(ranks)} cells"},
        "slope_fraction": SLOPE_FRACTION,
        "proxies": {
            "overall": rank_proxies(pooled, proxies, **kwargs),
            "by_method": {
                group_key(m): rank_proxies(g, proxies, **kwargs)
                for m, g in table.groupby("method", sort=False)
            },
        },
    }
