"""Method grouping and proxy ranking on synthetic sets whose best proxy is known, and the
report's diagnostics figure and tables from a study directory with diagnostics.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import synthetic_cells, write_study

from analysis.proxies import fit_methods, val_loss_slope
from analysis.report import write_report
from analysis.table import load_results

SCALE = {"simmim": 0.5, "mae": 5.0}  # the two methods' losses differ tenfold


def _method_set(n: int = 20, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cells of two methods driven by a latent quality q: top-1 = 70 + 20 q + noise.
    Proxies: attention entropy = 2 − q exactly (the best), val loss = scale · (1 − q/2) with
    noise (good within a method, useless pooled raw), head KL pure noise (the worst), the
    val-loss slope noise too."""
    rng = np.random.default_rng(seed)
    cells, curves, diag = [], [], []
    for method, scale in SCALE.items():
        for i in range(n):
            q = rng.uniform()
            cid = f"{method}-{i}"
            val = scale * (1 - q / 2) + rng.normal(0, 0.08 * scale)
            cells.append({"cell_id": cid, "method": method, "model": f"m{i % 4}",
                          "params_m": 1.0 + i % 4, "data": "d", "n_train_images": 1000,
                          "iterations": 100 + i, "status": "complete", "val_loss": val,
                          "finetune_top1": 70 + 20 * q + rng.normal(0, 0.2)})  # fmt: skip
            for step in (50, 75, 100 + i):
                curves.append({"cell_id": cid, "phase": "pretrain", "step": step, "split": "val",
                               "metric": "loss", "value": val + rng.normal(0, 0.1)})  # fmt: skip
            summary = {"attn_entropy": 2 - q, "head_kl": rng.uniform()}
            diag += [{"cell_id": cid, "layer": -1, "head": -1, "other": -1, "metric": k,
                      "value": v} for k, v in summary.items()]  # fmt: skip
            diag += [{"cell_id": cid, "layer": layer, "head": h, "other": -1,
                      "metric": metric, "value": float(layer + h + q)}
                     for layer in range(3) for h in range(2)
                     for metric in ("distance_px", "entropy")]  # fmt: skip
            diag += [{"cell_id": cid, "layer": layer, "head": -1, "other": -1,
                      "metric": "head_kl", "value": 0.1 * layer} for layer in range(3)]  # fmt: skip
    return pd.DataFrame(cells), pd.DataFrame(curves), pd.DataFrame(diag)


def test_the_known_best_proxy_ranks_first_overall_and_per_method() -> None:
    cells, curves, diag = _method_set()
    fits = fit_methods(cells, curves, diag, n_resamples=200)
    assert fits["methods"] == ["simmim", "mae"]
    rankings = [(1.5, fits["proxies"]["overall"])]  # pooled: z-scores of unequal spreads
    rankings += [(0.5, r) for r in fits["proxies"]["by_method"].values()]  # noise: 0.2 pts
    for limit, ranking in rankings:
        names = [r["proxy"] for r in ranking]
        assert names[0] == "diag_attn_entropy", names
        assert names.index("val_loss") < names.index("diag_head_kl")
        best = ranking[0]
        assert best["spearman"]["r"] < -0.9
        assert best["spearman"]["ci_low"] <= best["spearman"]["r"] <= best["spearman"]["ci_high"]
        assert best["loo_mae"] < limit < ranking[-1]["loo_mae"]
    assert {r["proxy"] for r in fits["proxies"]["overall"]} == {
        "val_loss", "val_loss_slope", "diag_attn_entropy", "diag_head_kl",
    }  # fmt: skip


def test_method_is_a_grouping_losses_are_compared_on_ranks() -> None:
    cells, curves, diag = _method_set()
    fits = fit_methods(cells, curves, diag, n_resamples=200)
    for method in SCALE:
        assert fits["by_method"][method]["spearman"]["r"] < -0.8
    assert fits["across_methods"]["spearman"]["r"] < -0.8
    assert fits["across_methods"]["n"] == len(cells)
    # pooled raw, the tenfold scale would hide the relation: the rank view does not
    raw = np.corrcoef(cells["val_loss"], cells["finetune_top1"])[0, 1]
    assert abs(raw) < 0.5


def test_val_loss_slope_over_the_last_part_of_training() -> None:
    curves = pd.DataFrame(
        {"cell_id": ["a"] * 4 + ["b"], "split": "val", "metric": "loss",
         "step": [100, 200, 300, 400, 400], "value": [9.0, 1.0, 0.8, 0.6, 1.0]}
    )  # fmt: skip
    slopes = val_loss_slope(curves, fraction=0.5)
    assert slopes["a"] == pytest.approx(-2.0)  # steps 200…400: −0.2 per 100 steps
    assert "b" not in slopes  # one point: no slope


def test_cells_without_a_method_column_are_simmim() -> None:
    cells = synthetic_cells()
    cells = cells[cells["status"] == "complete"]
    fits = fit_methods(cells, None, None, n_resamples=200)
    assert fits["methods"] == ["simmim"]
    assert [r["proxy"] for r in fits["proxies"]["overall"]] == ["val_loss"]
    assert fits["proxies"]["overall"][0]["spearman"]["r"] < -0.9


def test_report_shows_diagnostics_per_layer_and_the_proxy_ranking(tmp_path: Path) -> None:
    cells, curves, diag = _method_set(n=8)
    root = tmp_path / "study"
    root.mkdir()
    cells.to_parquet(root / "cells.parquet", index=False)
    curves.to_parquet(root / "curves.parquet", index=False)
    diag.to_parquet(root / "diagnostics.parquet", index=False)
    results = load_results(str(root))
    assert results.diagnostics is not None and set(results.diagnostics["cell_id"]) == set(
        cells["cell_id"]
    )
    report = Path(write_report(str(root), tmp_path / "out"))
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["methods"]["proxies"]["overall"][0]["proxy"] == "diag_attn_entropy"
    page = report.read_text()
    assert "fig-diagnostics_per_layer" in page
    assert "Which proxy predicts top-1 best: all methods" in page
    assert "Val loss and top-1 within each method" in page


def test_a_study_without_diagnostics_has_no_diagnostics_figure(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    report = Path(write_report(str(root), tmp_path / "out"))
    page = report.read_text()
    assert "fig-diagnostics_per_layer" not in page
    assert "Which proxy predicts top-1 best" in page
