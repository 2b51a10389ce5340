"""The saturating power law y(D) = E + A · D^(-alpha) and its fit.

The fit is multi-start (the best local minima of a grid over alpha, where E and A are
linear), first with squared loss, then ``ROBUST_ROUNDS`` times with ``soft_l1`` whose
scale is 1.4826 · the median absolute residual of the previous fit (so one bad cell does
not bend the curve). A fit reports the parameters that sit on a bound (``at_bound``); its
intervals are linearised (Jacobian at the solution, Student t with n - 3 degrees of
freedom) and given only with at least ``MIN_DOF`` degrees of freedom and no parameter on
a bound, clipped to the parameter's bounds; otherwise ``intervals`` is null with the
reason. Series with fewer than ``MIN_POWER_LAW_POINTS`` sizes are skipped.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import optimize, stats

MIN_POWER_LAW_POINTS = 4
ALPHA_BOUNDS = (0.0, 4.0)
ALPHA_GRID = np.linspace(0.02, 3.0, 60)
N_STARTS = 3
ROBUST_ROUNDS = 3
MIN_DOF = 2


def power_law(d: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    """The saturating power law E + A · D^(-alpha)."""
    return e + a * np.asarray(d, dtype=float) ** (-alpha)


def fit_power_law(d: np.ndarray, y: np.ndarray, *, confidence: float = 0.95) -> dict[str, Any]:
    """Fit y = E + A · d^(-alpha) (see the module docstring) and return parameters, intervals."""
    d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)
    n = len(np.unique(d))
    if n < MIN_POWER_LAW_POINTS:
        return {"n": len(d), "skipped": f"{n} data sizes (need {MIN_POWER_LAW_POINTS})"}
    # Work in units of the geometric mean size so A and alpha are well conditioned.
    d0 = float(np.exp(np.log(d).mean()))
    u = d / d0
    e_low = 0.0 if y.min() > 0 else -np.inf
    bounds = ([e_low, -50.0, ALPHA_BOUNDS[0]], [y.min(), 50.0, ALPHA_BOUNDS[1]])

    def residuals(theta: np.ndarray) -> np.ndarray:
        return theta[0] + np.exp(theta[1]) * u ** (-theta[2]) - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        term = np.exp(theta[1]) * u ** (-theta[2])
        return np.column_stack([np.ones_like(u), term, -term * np.log(u)])

    def solve(x0: np.ndarray, loss: str, f_scale: float) -> optimize.OptimizeResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow on wild trial steps
            return optimize.least_squares(
                residuals,
                np.clip(x0, *bounds),
                jac=jacobian,
                bounds=bounds,
                loss=loss,
                f_scale=f_scale,
                x_scale="jac",
            )

    first = sorted((solve(x0, "linear", 1.0) for x0 in _starts(u, y, e_low)), key=_cost)
    best, candidates = first[0], [r.x for r in first[:3]]
    for _ in range(ROBUST_ROUNDS):
        # The scale comes from the current fit's residuals; re-estimating it a few times
        # stops one bad cell, which inflates the squared-loss residuals, from hiding.
        mad = float(np.median(np.abs(residuals(best.x))))
        f_scale = max(1.4826 * mad, 1e-6 * float(np.ptp(y)), 1e-12)
        fits = [solve(x, "soft_l1", f_scale) for x in candidates]
        best = min(fits, key=_cost)
        candidates = [best.x]
    e, log_a, alpha = best.x
    resid = residuals(best.x)
    out: dict[str, Any] = {
        "n": len(d),
        "E": float(e),
        "A": float(np.exp(log_a) * d0**alpha),
        "alpha": float(alpha),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "max_abs_residual": float(np.abs(resid).max()),
        "f_scale": f_scale,
        "converged": bool(best.success),
        "at_bound": [
            name
            for name, v, lo, hi in zip(("E", "logA", "alpha"), best.x, *bounds, strict=True)
            if np.isclose(v, lo) or np.isclose(v, hi)
        ],
    }
    if out["at_bound"]:
        bound = ", ".join(out["at_bound"])
        out.update(intervals=None, interval_method=f"none ({bound} at a bound)")
    elif len(u) - 3 < MIN_DOF:
        out.update(
            intervals=None,
            interval_method=f"none ({len(u) - 3} degrees of freedom; need {MIN_DOF})",
        )
    else:
        out.update(_intervals(u, best.x, resid, np.log(d0), confidence, bounds))
    return out


def _starts(u: np.ndarray, y: np.ndarray, e_low: float) -> list[np.ndarray]:
    """Starting points: the best local minima of the squared error over a grid of alpha.

    For a fixed alpha the model is linear in (E, A), so each grid point costs one small
    least-squares solve; the full non-linear fit then starts from the best few.
    """
    sse, params = [], []
    for alpha in ALPHA_GRID:
        basis = u ** (-alpha)
        (e, a), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(u), basis]), y, rcond=None)
        e = float(np.clip(e, e_low, y.min()))
        a = max(float(((y - e) * basis).sum() / (basis * basis).sum()), 1e-12)
        sse.append(float(((e + a * basis - y) ** 2).sum()))
        params.append(np.array([e, np.log(a), alpha]))
    sse_arr = np.array(sse)
    padded = np.concatenate([[np.inf], sse_arr, [np.inf]])
    minima = np.flatnonzero((sse_arr <= padded[:-2]) & (sse_arr <= padded[2:]))
    best = minima[np.argsort(sse_arr[minima])][:N_STARTS]
    return [params[i] for i in best]


def _cost(res: optimize.OptimizeResult) -> float:
    return float(res.cost) if np.isfinite(res.cost) else np.inf


def _intervals(
    u: np.ndarray,
    theta: np.ndarray,
    resid: np.ndarray,
    log_d0: float,
    confidence: float,
    bounds: tuple[list[float], list[float]],
) -> dict[str, Any]:
    n, p = len(u), 3
    e, log_a, alpha = theta
    term = np.exp(log_a) * u ** (-alpha)
    jac = np.column_stack([np.ones(n), term, -term * np.log(u)])
    cov = float((resid**2).sum() / (n - p)) * np.linalg.pinv(jac.T @ jac)
    t = float(stats.t.ppf(0.5 + confidence / 2.0, n - p))
    se_e, se_alpha = np.sqrt(max(cov[0, 0], 0.0)), np.sqrt(max(cov[2, 2], 0.0))
    # A in the caller's units is exp(logA + alpha · log d0): delta method on its log.
    grad = np.array([0.0, 1.0, log_d0])
    se_log_a = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    log_a_orig = log_a + alpha * log_d0
    # exp of a log past the float range would overflow: such an end is unbounded (null)
    log_ends = (log_a_orig - t * se_log_a, log_a_orig + t * se_log_a)
    a_ends = [float(np.exp(v)) if v < 700 else None for v in log_ends]
    (e_lo, _, a_lo), (e_hi, _, a_hi) = bounds
    return {
        "intervals": {
            "E": [float(max(e - t * se_e, e_lo)), float(min(e + t * se_e, e_hi))],
            "A": a_ends,
            "alpha": [
                float(max(alpha - t * se_alpha, a_lo)),
                float(min(alpha + t * se_alpha, a_hi)),
            ],
        },
        "interval_method": f"linearised (Jacobian), Student t with {n - p} df, "
        "clipped to the bounds",
        # for the band of the fitted curve (delta method), in units of d0 = exp(log_d0)
        "band": {"log_d0": log_d0, "cov": cov.tolist(), "t": t},
    }


def power_law_band(fit: dict[str, Any], d: np.ndarray) -> np.ndarray | None:
    """Half-width of the fitted curve's confidence band at sizes ``d`` (delta method on
    (E, log A, alpha) at the solution), or None when the fit reports no interval."""
    band = fit.get("band")
    if not band:
        return None
    u = np.asarray(d, dtype=float) / np.exp(band["log_d0"])
    log_a = np.log(fit["A"]) - fit["alpha"] * band["log_d0"]
    term = np.exp(log_a) * u ** (-fit["alpha"])
    grad = np.column_stack([np.ones_like(u), term, -term * np.log(u)])
    var = np.einsum("ij,jk,ik->i", grad, np.asarray(band["cov"]), grad)
    return band["t"] * np.sqrt(np.maximum(var, 0.0))
