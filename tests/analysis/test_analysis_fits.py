"""The fits on data with known answers: correlations, the line, rankings, turns, power law."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import (
    OVERFIT_PAIRS,
    SPIKE_CELL,
    synthetic_cells,
    synthetic_curves,
)
from scipy import stats

from analysis.fits import (
    _kendall_of,
    _pearson_of,
    _spearman_of,
    correlation,
    fit_correlations,
    linear_fit,
    ranking_agreement,
)
from analysis.overfit import curve_overfit, find_turn, fit_overfitting, smooth
from analysis.scaling_fit import fit_power_law, power_law, slope_per_decade
from analysis.table import load_results


def _correlated(n: int, rho: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return x, y


@pytest.mark.parametrize(
    ("ours", "scipys"),
    [
        (_pearson_of, stats.pearsonr),
        (_spearman_of, stats.spearmanr),
        (_kendall_of, stats.kendalltau),
    ],
)
def test_bootstrap_statistics_match_scipy_on_resamples(ours, scipys) -> None:
    x, y = _correlated(30, -0.6)
    y = np.round(y, 1)  # ties, so Kendall's tau-b differs from tau-a
    rng = np.random.default_rng(0)
    idx = np.stack([np.arange(30), rng.integers(0, 30, 30), rng.integers(0, 30, 30)])
    got = ours(x, y)(idx, axis=-1)
    for row, value in zip(idx, got, strict=True):
        assert value == pytest.approx(scipys(x[row], y[row]).statistic, abs=1e-12)


def test_correlation_recovers_a_known_correlation() -> None:
    x, y = _correlated(200, -0.8, seed=1)
    res = correlation(x, y, seed=0)
    assert res["n"] == 200
    assert res["pearson"]["r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert res["pearson"]["r"] == pytest.approx(-0.8, abs=0.06)
    for name in ("pearson", "spearman", "kendall"):
        entry = res[name]
        assert entry["ci_method"] == "BCa bootstrap"  # n = 200 ≥ BOOTSTRAP_MIN_N
        assert entry["ci_low"] < entry["r"] < entry["ci_high"] < 0
    # the population value lies in the Pearson interval
    assert res["pearson"]["ci_low"] < -0.8 < res["pearson"]["ci_high"]


def test_correlation_intervals_are_seeded() -> None:
    x, y = _correlated(40, 0.5)
    assert correlation(x, y, seed=3) == correlation(x, y, seed=3)
    assert correlation(x, y, seed=3)["pearson"] != correlation(x, y, seed=4)["pearson"]


def test_correlation_skips_small_or_constant_groups() -> None:
    assert correlation([1.0, 2.0], [3.0, 1.0])["skipped"] == "only 2 cells (need 3)"
    assert "constant" in correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["skipped"]


def test_perfect_correlation_falls_back_to_percentile_interval() -> None:
    x = np.arange(6.0)
    res = correlation(x, 5 - 2 * x)
    assert res["pearson"]["r"] == pytest.approx(-1.0)
    assert res["pearson"]["ci_low"] == pytest.approx(-1.0)
    assert res["pearson"]["ci_high"] == pytest.approx(-1.0)


def test_fit_correlations_groups_and_reports_skips() -> None:
    cells = pd.DataFrame(
        {
            "model": ["a"] * 4 + ["b"] * 2,
            "iterations": [1, 2, 1, 2, 1, 2],
            "val_loss": [0.5, 0.4, 0.45, 0.35, 0.3, 0.2],
            "finetune_top1": [70.0, 72.0, 71.0, 73.5, 75.0, 77.0],
        }
    )
    res = fit_correlations(cells, n_resamples=200)
    assert res["overall"]["n"] == 6
    assert res["by_model"]["a"]["n"] == 4 and "pearson" in res["by_model"]["a"]
    assert res["by_model"]["b"]["skipped"] == "only 2 cells (need 3)"
    assert set(res["by_iterations"]) == {1, 2}
    assert res["skipped"] == ["model b: only 2 cells (need 3)"]


def test_leave_one_out_error_is_zero_on_exact_linear_data() -> None:
    x = np.linspace(0.3, 0.6, 9)
    res = linear_fit(x, 95.0 - 50.0 * x)
    assert res["slope"] == pytest.approx(-50.0)
    assert res["intercept"] == pytest.approx(95.0)
    assert res["loo_mae"] == pytest.approx(0.0, abs=1e-9)
    assert res["r2"] == pytest.approx(1.0)


def test_leave_one_out_error_matches_refitting() -> None:
    x, y = _correlated(12, 0.7, seed=5)
    errors = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        errors.append(abs(intercept + slope * x[i] - y[i]))
    assert linear_fit(x, y)["loo_mae"] == pytest.approx(np.mean(errors), rel=1e-9)


def test_ranking_agreement_counts_hits_and_regret() -> None:
    cells = pd.DataFrame(
        {
            "cell_id": list("abcdef"),
            "model": ["m"] * 3 + ["n"] * 3,
            "data": ["d1", "d1", "d2", "d1", "d1", "d2"],
            "iterations": [1, 2, 1, 1, 2, 1],
            "val_loss": [0.5, 0.4, 0.3, 0.5, 0.4, 0.45],
            # model m: lowest loss (c) is best; model n: lowest loss (e) is 1 pt behind d
            "finetune_top1": [70.0, 71.0, 72.0, 74.0, 73.0, 72.0],
        }
    )
    res = ranking_agreement(cells)
    assert res["model"]["n_groups"] == 2 and res["model"]["hits"] == 1
    assert res["model"]["mean_regret_points"] == pytest.approx(0.5)
    miss = next(g for g in res["model"]["groups"] if not g["hit"])
    assert (miss["model"], miss["picked_cell"], miss["best_cell"]) == ("n", "e", "d")
    assert res["model_data"]["n_groups"] == 2  # (m, d1) and (n, d1); single cells skipped
    assert res["model_data"]["hit_rate"] == pytest.approx(0.5)


def test_find_turn_locates_a_sustained_rise() -> None:
    steps = np.arange(100, 2100, 100)
    val = np.where(steps <= 1200, 1.0 - steps / 2000, 0.4 + (steps - 1200) / 4000)
    res = find_turn(steps, val)
    assert res["turned"] and res["turn_step"] == 1200
    assert 1200 < res["rise_step"] <= 1400  # the running median lags by one point


@pytest.mark.parametrize("where", [5, 10, -2])
def test_find_turn_ignores_a_single_spike(where: int) -> None:
    steps = np.arange(100, 2100, 100)
    val = 0.4 + 0.5 * np.exp(-steps / 400)
    val[where] += 0.1
    assert not find_turn(steps, val)["turned"]


def test_find_turn_respects_the_tolerance() -> None:
    steps = np.arange(1, 21)
    val = np.concatenate([np.linspace(1.0, 0.5, 10), 0.5 + np.linspace(1e-4, 5e-4, 10)])
    assert not find_turn(steps, val, rel_tol=0.002)["turned"]
    assert find_turn(steps, val, rel_tol=0.0002)["turned"]


def test_curve_overfit_needs_falling_train_loss() -> None:
    steps = np.arange(100, 2100, 100)
    val = np.where(steps <= 1000, 1.0 - steps / 2000, 0.5 + (steps - 1000) / 4000)
    falling = curve_overfit((steps, val), (steps, 1.0 - steps / 4000))
    assert falling["turned"] and falling["train_falling"] and falling["overfits"]
    flat = curve_overfit((steps, val), (steps, np.where(steps <= 1000, 1.0 - steps / 4000, 0.75)))
    assert flat["turned"] and flat["train_falling"] is False and not flat["overfits"]
    alone = curve_overfit((steps, val), None)  # no training curve logged: the val curve decides
    assert alone["train_falling"] is None and alone["overfits"]


def test_running_median_matches_pandas() -> None:
    values = np.random.default_rng(0).normal(size=17)
    expected = pd.Series(values).rolling(3, center=True, min_periods=1).median()
    assert smooth(values, 3) == pytest.approx(expected.to_numpy())


def test_synthetic_overfitting_pattern_is_recovered() -> None:
    cells = synthetic_cells()
    results = load_results(cells, synthetic_curves(cells))
    res = fit_overfitting(results.cells, results.curves)
    flagged = {(r["model"], r["data"]) for r in res["by_model_data"] if r["overfits"]}
    assert flagged == OVERFIT_PAIRS
    for record in res["by_model_data"]:
        pair = (record["model"], record["data"])
        assert record["rises_with_length"] == (pair in OVERFIT_PAIRS)
        assert record["best_iterations"] == (2000 if pair in OVERFIT_PAIRS else 4000)
        curve = record["curve"]
        assert curve["cell_id"].endswith("/4000")
        if pair in OVERFIT_PAIRS:
            assert curve["turn_step"] == 2000 and curve["train_falling"] is True
            assert record["rise"] == pytest.approx(0.055)
        else:
            assert not curve["turned"]
    spike = next(c for c in res["by_curve"] if c["cell_id"] == SPIKE_CELL)
    assert not spike["overfits"]
    assert res["overfitting_cells"] == sorted(f"{m}/{d}/4000" for m, d in OVERFIT_PAIRS)


def test_power_law_recovers_known_parameters() -> None:
    d = np.geomspace(1e4, 1e7, 8)
    res = fit_power_law(d, power_law(d, 0.4, 5.0, 0.3))
    assert res["E"] == pytest.approx(0.4, rel=1e-4)
    assert res["A"] == pytest.approx(5.0, rel=1e-3)
    assert res["alpha"] == pytest.approx(0.3, rel=1e-4)
    assert res["converged"] and res["at_bound"] == []
    for name, truth in (("E", 0.4), ("A", 5.0), ("alpha", 0.3)):
        lo, hi = res["intervals"][name]
        assert lo <= truth * (1 + 1e-6) and hi >= truth * (1 - 1e-6)


def test_power_law_is_robust_to_one_bad_point() -> None:
    rng = np.random.default_rng(0)
    d = np.geomspace(1e4, 1e7, 8)
    y = power_law(d, 0.4, 5.0, 0.3) * (1 + 0.002 * rng.normal(size=8))
    y[3] += 0.05  # one cell far off the curve
    res = fit_power_law(d, y)
    assert res["E"] == pytest.approx(0.4, abs=0.01)
    assert res["alpha"] == pytest.approx(0.3, abs=0.02)
    lo, hi = res["intervals"]["alpha"]
    assert lo < 0.3 < hi


def test_power_law_needs_four_sizes() -> None:
    assert fit_power_law([1e4, 1e5, 1e6], [0.5, 0.45, 0.42])["skipped"] == ("3 data sizes (need 4)")


def test_slope_per_decade() -> None:
    assert slope_per_decade([1e4, 1e5, 1e6], [60.0, 62.0, 64.0]) == pytest.approx(2.0)
    assert slope_per_decade([1e4], [60.0]) is None


@pytest.mark.parametrize(("name", "rho", "low"), [("pearson", -0.8, 0.92), ("spearman", -0.8, 0.9)])
def test_closed_form_intervals_cover_at_small_n(name: str, rho: float, low: float) -> None:
    """At n = 9 (a model's cells) the interval holds the population value ~95% of the time."""
    from analysis.intervals import fisher_interval

    truth = rho if name == "pearson" else 6 / np.pi * np.arcsin(rho / 2)  # Spearman of a normal
    hits = 0
    for seed in range(400):
        x, y = _correlated(9, rho, seed=seed)
        r = stats.pearsonr(x, y)[0] if name == "pearson" else stats.spearmanr(x, y)[0]
        lo, hi, method = fisher_interval(name, r, 9, 0.95)
        hits += lo <= truth <= hi
    assert method in ("Fisher z", "Bonett-Wright z")
    assert low <= hits / 400 <= 0.99


def test_interval_method_follows_the_group_size() -> None:
    small, large = correlation(*_correlated(12, -0.7)), correlation(*_correlated(30, -0.7))
    assert small["pearson"]["ci_method"] == "Fisher z"
    assert small["kendall"]["ci_method"] == "Fieller z"
    assert large["pearson"]["ci_method"] == "BCa bootstrap"
    assert correlation([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])["pearson"]["ci_method"] == "none (n < 4)"


def test_power_law_intervals_need_degrees_of_freedom() -> None:
    rng = np.random.default_rng(1)
    for n, has in ((4, False), (5, True)):
        d = np.geomspace(1e5, 1e7, n)
        y = power_law(d, 0.4, 5.0, 0.3) + 0.001 * rng.normal(size=n)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            res = fit_power_law(d, y)
        assert (res["intervals"] is not None) == has, res["interval_method"]
        if has:
            lo, hi = res["intervals"]["alpha"]
            assert 0.0 <= lo <= res["alpha"] <= hi <= 4.0  # clipped to alpha's bounds
        else:
            assert res["interval_method"] == "none (1 degrees of freedom; need 2)"


def test_power_law_flags_a_parameter_on_its_bound() -> None:
    d = np.geomspace(1e5, 1e7, 6)
    y = 0.5 - 0.01 * np.log10(d)  # no floor in sight: E runs to its lower bound 0
    res = fit_power_law(d, y)
    assert "E" in res["at_bound"] and res["intervals"] is None
    assert res["interval_method"].endswith("at a bound)")


def test_power_law_band_only_with_an_interval() -> None:
    from analysis.scaling_fit import power_law_band

    rng = np.random.default_rng(0)
    d = np.geomspace(1e5, 1e7, 6)
    truth = power_law(d, 0.4, 5.0, 0.3)
    res = fit_power_law(d, truth + 0.002 * rng.normal(size=6))
    half = power_law_band(res, d)
    assert half is not None and np.all((half > 0) & (half < 0.02))
    fitted = power_law(d, res["E"], res["A"], res["alpha"])
    assert np.mean(np.abs(fitted - truth) <= half) >= 0.5  # a band, not a line
    assert power_law_band(fit_power_law(d[:4], truth[:4]), d) is None  # 1 dof: no band
