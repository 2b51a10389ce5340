"""The paper's released 63 cells: the shipped data and the code reproduce its findings,
and `--reference paper` analyses it or compares a study with it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import external_table

from analysis.errors import AnalysisError
from analysis.reference import load_reference, reference_path
from analysis.report import analyze, write_report
from scaling.cli import main

# The findings quoted for the released table (Xie et al. 2023): the tests check that the
# shipped numbers and the code agree with them, within rounding of the quotes.
PAPER_OVERFITTING = {
    ("swinv2-s", "in1k-10pct"),
    ("swinv2-s", "in1k-20pct"),
    ("swinv2-b", "in1k-10pct"),
    ("swinv2-b", "in1k-20pct"),
    ("swinv2-l", "in1k-10pct"),
    ("swinv2-l", "in1k-20pct"),
    ("swinv2-h", "in1k-20pct"),
    ("swinv2-h", "in1k-50pct"),
    ("swinv2-g", "in1k-50pct"),
}


@pytest.fixture(scope="module")
def paper_fits() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow in any fit
        return analyze(load_reference("paper"), n_resamples=500)


def test_the_shipped_table_has_the_63_released_cells() -> None:
    header = [ln for ln in Path(reference_path("paper")).read_text().splitlines() if ln[:1] == "#"]
    assert any("microsoft/Swin-Transformer" in ln and "MODELHUB.md" in ln for ln in header)
    cells = load_reference("paper").cells
    assert len(cells) == 63
    assert cells.groupby("model").size().to_dict() == {
        "swinv2-s": 12, "swinv2-b": 15, "swinv2-l": 15, "swinv2-h": 12, "swinv2-g": 9,
    }  # fmt: skip
    assert set(cells["iterations"]) == {125_000, 250_000, 500_000}


def test_published_correlations_are_reproduced(paper_fits: dict[str, Any]) -> None:
    overall = paper_fits["correlation"]["overall"]
    assert overall["n"] == 63
    assert overall["pearson"]["r"] == pytest.approx(-0.786, abs=5e-4)
    assert overall["spearman"]["r"] == pytest.approx(-0.897, abs=5e-4)
    assert overall["pearson"]["ci_method"] == "BCa bootstrap"  # 63 cells
    assert overall["pearson"]["ci_low"] < -0.786 < overall["pearson"]["ci_high"] < -0.6


def test_published_overfitting_pairs_and_split(paper_fits: dict[str, Any]) -> None:
    records = paper_fits["overfitting"]["by_model_data"]
    assert {(r["model"], r["data"]) for r in records if r["overfits"]} == PAPER_OVERFITTING
    split = paper_fits["correlation_split"]
    assert split["not_overfitting"]["n"] == 36 and split["overfitting"]["n"] == 27
    assert split["not_overfitting"]["pearson"]["r"] == pytest.approx(-0.956, abs=5e-4)
    assert split["overfitting"]["pearson"]["r"] == pytest.approx(-0.697, abs=5e-4)


def test_small_groups_get_closed_form_intervals(paper_fits: dict[str, Any]) -> None:
    g = paper_fits["correlation"]["by_model"]["swinv2-g"]
    assert g["n"] == 9
    pearson, spearman = g["pearson"], g["spearman"]
    assert pearson["ci_method"] == "Fisher z" and spearman["ci_method"] == "Bonett-Wright z"
    z, se = np.arctanh(pearson["r"]), 1 / np.sqrt(9 - 3)
    assert pearson["ci_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=1e-6)
    assert pearson["ci_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=1e-6)
    assert -1 < pearson["ci_low"] < pearson["r"] < pearson["ci_high"] < 0
    assert g["kendall"]["ci_method"] == "Fieller z"


def test_in22k_is_kept_apart_in_data_scaling(paper_fits: dict[str, Any]) -> None:
    scaling = paper_fits["scaling"]
    assert scaling["data_family"]["prefix"] == "in1k"
    assert scaling["data_family"]["apart"] == ["in22k"]
    b500 = next(
        e for e in scaling["vs_data"] if e["model"] == "swinv2-b" and e["iterations"] == 500_000
    )
    assert b500["top1_per_decade"] == pytest.approx(1.52, abs=0.005)  # 0.66 with IN-22K
    assert len(b500["n_train_images"]) == 4
    assert b500["other_data"] == [
        {"data": "in22k", "n_train_images": 14_197_122, "finetune_top1": 85.11, "val_loss": 0.4614}
    ]
    in22k = next(e for e in scaling["vs_model_size"] if e["data"] == "in22k")
    assert in22k["other_distribution"] is True


def test_power_laws_report_no_interval_without_the_dof(paper_fits: dict[str, Any]) -> None:
    fits = [
        e[k]
        for e in paper_fits["scaling"]["vs_data"]
        for k in ("val_loss_fit", "top1_error_fit")
        if "skipped" not in e[k]
    ]
    assert len(fits) == 18  # S, B, L have the four IN-1K sizes; H and g have fewer
    for fit in fits:
        assert fit["n"] == 4 and fit["intervals"] is None
        assert fit["interval_method"].startswith("none (")
        assert 0.0 <= fit["alpha"] <= 4.0
    bounded = [f for f in fits if f["at_bound"]]
    assert bounded and all("at a bound" in f["interval_method"] for f in bounded)


def test_cli_analyses_the_published_table_itself(tmp_path: Path, capsys) -> None:
    assert main(["analyze", "--reference", "paper", "-o", str(tmp_path / "out")]) == 0
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["cells"]["complete"] == 63 and fits["source"].endswith("paper_xie2023.csv")
    assert fits["reference"] is None


def test_cli_compares_a_study_with_the_published_cells(tmp_path: Path) -> None:
    published = load_reference("paper").cells
    study = published[published["model"] == "swinv2-b"].drop(columns=["cell_id", "_where"])
    study = study.assign(
        val_loss=study["val_loss"] + 0.01, finetune_top1=study["finetune_top1"] - 0.5
    )
    study.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "b.csv"), "--reference", "paper", "-o", str(out)]) == 0
    ref = json.loads((out / "fits.json").read_text())["reference"]
    assert ref["n_published"] == 63 and ref["n_matched"] == 15
    assert ref["mean_abs_val_loss_diff"] == pytest.approx(0.01)
    assert ref["mean_abs_top1_diff"] == pytest.approx(0.5)
    first = ref["matched"][0]
    assert first["val_loss_diff"] == pytest.approx(0.01) and first["model"] == "swinv2-b"
    page = (out / "report.html").read_text()
    assert "Compared with Xie et al." in page and "published (reference)" in page


def test_no_matching_cells_says_so(tmp_path: Path) -> None:
    report = write_report(
        external_table(tmp_path / "pub.csv"), tmp_path / "out", reference_name="paper"
    )
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["reference"]["n_matched"] == 0
    assert "none of the 63 published cells matches a cell of this study" in report.read_text()


def test_reference_errors(tmp_path: Path, capsys) -> None:
    assert main(["analyze", "--reference", "papr", "-o", str(tmp_path / "o")]) == 2
    assert "error: --reference: unknown reference 'papr'; known: paper" in capsys.readouterr().err
    assert main(["analyze", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "analyze: give a SOURCE, or --reference NAME to analyse a reference" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(AnalysisError, match="unknown reference"):
        write_report(pd.DataFrame(), tmp_path / "o", reference_name="nope")
