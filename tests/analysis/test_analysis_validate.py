"""Bad tables stop `mimscale analyze` with exit 2, the file's line, and nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import paper_line, paper_table, synthetic_cells

from analysis.errors import AnalysisError
from analysis.table import load_results
from scaling.cli import main

S10_125 = "swinv2-s,49,in1k-10pct,128117,125000,0.4820,82.69"
S10_250 = "swinv2-s,49,in1k-10pct,128117,250000,0.4961,83.11"


def _analyze_fails(table: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on a bad table: exit 2, one 'error:' line, OUT never created."""
    assert main(["analyze", str(table), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temp dir left behind
    return err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("83.17", "183.1", r"column 'finetune_top1' must be in \[0, 100\], got 183\.1"),
        ("0.5115", "-0.5", r"column 'val_loss' must be in \[0, inf\), got -0\.5"),
        ("0.5115", "inf", r"column 'val_loss' must be in \[0, inf\), got inf"),
        ("0.5115", "-inf", r"column 'val_loss' must be in \[0, inf\), got -inf"),
        (",500000,0.5115", ",0,0.5115", r"column 'iterations' must be in \(0, inf\), got 0"),
    ],
)
def test_values_out_of_range_name_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    line = paper_line(old)
    table = paper_table(tmp_path / "paper.csv", (old, new))
    err = _analyze_fails(table, tmp_path / "out", capsys)
    import re

    assert re.search(rf"paper\.csv: line {line}: {message}", err), err


def test_conflicting_duplicate_names_both_lines(tmp_path: Path, capsys) -> None:
    first, second = paper_line(S10_125), paper_line(S10_250)
    table = paper_table(tmp_path / "t.csv", (S10_250, S10_125.replace("0.4820", "0.4830")))
    err = _analyze_fails(table, tmp_path / "out", capsys)
    assert (
        f"lines {first}, {second}: the same cell (model=swinv2-s, data=in1k-10pct, "
        "iterations=125000) twice with different val_loss (0.482 vs 0.483); remove one, "
        "or add a 'seed' column if they are replicates"
    ) in err


def test_agreeing_duplicate_is_merged_with_a_note(tmp_path: Path) -> None:
    table = paper_table(tmp_path / "t.csv", (S10_250, S10_125))
    results = load_results(table)
    assert len(results.cells) == 62  # the repeat is one cell, not two
    lines = f"{paper_line(S10_125)}, {paper_line(S10_250)}"
    assert f"1 rows repeated another row exactly and were merged into it (lines {lines})" in (
        results.notes
    )


def test_one_size_per_data_name(tmp_path: Path, capsys) -> None:
    line = paper_line(S10_250)
    table = paper_table(tmp_path / "t.csv", (S10_250, S10_250.replace("128117", "128118")))
    err = _analyze_fails(table, tmp_path / "out", capsys)
    assert (
        f"line {line}: data 'in1k-10pct' has n_train_images 128117, 128118 in different rows "
        "(128117 in most); one data has one n_train_images"
    ) in err


def test_all_val_losses_missing(tmp_path: Path, capsys) -> None:
    df = synthetic_cells()
    df["val_loss"] = np.nan
    df.to_csv(tmp_path / "t.csv", index=False)
    err = _analyze_fails(tmp_path / "t.csv", tmp_path / "out", capsys)
    assert "t.csv: no complete cell has a val_loss (all 45 are empty); nothing to analyse" in err


def test_semicolon_separated_file_gets_a_hint(tmp_path: Path, capsys) -> None:
    text = (tmp_path / "x").parent.joinpath("t.csv")
    synthetic_cells().to_csv(text, index=False, sep=";")
    err = _analyze_fails(text, tmp_path / "out", capsys)
    assert "the file looks semicolon-separated; save it comma-separated (one row per cell)" in err


def test_wide_table_gets_a_hint(tmp_path: Path, capsys) -> None:
    cells = synthetic_cells().query("status == 'complete'")
    wide = cells.pivot_table(index=["model", "data"], columns="iterations", values="val_loss")
    wide.reset_index().to_csv(tmp_path / "wide.csv", index=False)
    err = _analyze_fails(tmp_path / "wide.csv", tmp_path / "out", capsys)
    assert "missing column 'params_m' (number)" in err
    assert "the table must be long format, one row per cell" in err
    assert "pandas.melt" in err


def test_out_that_is_a_file_fails_before_the_analysis(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    table = paper_table(tmp_path / "paper.csv", ("83.17", "183.1"))  # would fail later
    assert main(["analyze", str(table), "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {blocker}: exists and is not a directory; -o needs a directory\n"
    assert blocker.read_text() == "keep me"


def test_parquet_errors_name_the_row_index(tmp_path: Path) -> None:
    df = synthetic_cells()
    df.loc[7, "finetune_top1"] = 101.0
    df.to_parquet(tmp_path / "cells.parquet", index=False)
    with pytest.raises(
        AnalysisError,
        match=r"cells\.parquet: row 7: column 'finetune_top1' must be in \[0, 100\], got 101",
    ):
        load_results(tmp_path)


def _replicates() -> pd.DataFrame:
    base = synthetic_cells().query("status == 'complete'").drop(columns=["cell_id", "status"])
    runs = []
    for seed, shift in ((0, -0.002), (1, 0.0), (2, 0.002)):
        run = base.assign(seed=seed, val_loss=base["val_loss"] + shift)
        run["finetune_top1"] += 10 * shift
        runs.append(run)
    return pd.concat(runs, ignore_index=True)


def test_replicates_are_one_point_each_in_the_fits(tmp_path: Path) -> None:
    import json

    from analysis.report import write_report

    report = write_report(_replicates(), tmp_path / "out")
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["cells"]["max_seeds"] == 3 and fits["cells"]["complete"] == 45
    assert fits["correlation"]["overall"]["n"] == 45  # cell means, not 135 runs
    page = report.read_text()
    assert "val_loss_sd" in page and "up to 3 seeds" in page


def test_replicate_seeds_become_cell_means(tmp_path: Path) -> None:
    base = synthetic_cells().query("status == 'complete'").drop(columns=["cell_id", "status"])
    runs = []
    for seed, shift in ((0, -0.002), (1, 0.0), (2, 0.002)):
        run = base.assign(seed=seed, val_loss=base["val_loss"] + shift)
        run["finetune_top1"] += 10 * shift
        runs.append(run)
    table = pd.concat(runs, ignore_index=True)
    results = load_results(table)
    assert len(results.cells) == 45 and results.n_seeds == 3
    assert results.cells["n_seeds"].eq(3).all()
    merged = results.cells.set_index("cell_id").sort_index()
    expected = base.assign(
        cell_id=base["model"] + "/" + base["data"] + "/" + base["iterations"].astype(str)
    ).set_index("cell_id").sort_index()  # fmt: skip
    assert merged["val_loss"].to_numpy() == pytest.approx(expected["val_loss"].to_numpy())
    assert merged["val_loss_sd"].to_numpy() == pytest.approx(0.002)
    assert any("135 complete runs are replicates of 45 cells" in n for n in results.notes)


def test_failed_cells_need_no_measured_keys(tmp_path: Path) -> None:
    """A study's failed stage never measured params_m or n_train_images: its row is listed
    as left out, not refused; a complete row without them still is."""
    cells = synthetic_cells()
    cells = cells[cells["status"] == "complete"].reset_index(drop=True)
    cells.loc[0, ["params_m", "n_train_images", "val_loss", "finetune_top1"]] = np.nan
    cells.loc[0, "status"] = "failed"
    results = load_results(cells)
    assert results.excluded == {"failed": 1} and len(results.cells) == len(cells) - 1
    cells.loc[0, "status"] = "complete"
    with pytest.raises(AnalysisError, match=r"row 0: column 'params_m' is empty"):
        load_results(cells)
