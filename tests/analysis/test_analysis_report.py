"""write_report end to end: fits.json recovers the synthetic truths, the report is
self-contained, outputs are deterministic and atomic, and the CLI verb behaves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analysis_fixtures import (
    ALPHA,
    DATA,
    E_MODEL,
    OVERFIT_PAIRS,
    A,
    external_table,
    synthetic_cells,
    write_study,
)

from analysis.errors import AnalysisError
from analysis.report import write_report
from scaling.cli import main

FIGURES = (
    "val_loss_vs_top1",
    "overfitting_curves",
    "scaling_vs_data",
    "scaling_vs_model_size",
    "top1_heatmap",
    "val_loss_heatmap",
)


def _strict_json(path: Path) -> dict[str, Any]:
    def no_constants(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}")

    return json.loads(path.read_text(), parse_constant=no_constants)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def report(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(study, tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def fits(report: Path) -> dict[str, Any]:
    return _strict_json(report.parent / "fits.json")


def test_fits_json_counts_and_study(fits: dict[str, Any]) -> None:
    assert fits["study"] == {"name": "synthetic", "hash": "abc123"}
    assert fits["cells"] == {
        "rows": 47,
        "complete": 45,
        "excluded": {"failed": 1, "running": 1},
        "with_curves": 45,
        "max_seeds": 1,
    }


def test_fits_json_recovers_the_correlation(fits: dict[str, Any]) -> None:
    cells = synthetic_cells()
    cells = cells[cells["status"] == "complete"]
    expected = np.corrcoef(cells["val_loss"], cells["finetune_top1"])[0, 1]
    overall = fits["correlation"]["overall"]
    assert overall["n"] == 45
    assert overall["pearson"]["r"] == pytest.approx(expected, abs=1e-12)
    assert overall["pearson"]["ci_low"] <= expected <= overall["pearson"]["ci_high"] < -0.95
    assert set(fits["correlation"]["by_model"]) == set(E_MODEL)
    assert set(fits["correlation"]["by_iterations"]) == {"1000", "2000", "4000"}
    line = fits["linear_fit"]["overall"]
    assert line["slope"] == pytest.approx(-60, abs=2)
    assert line["loo_mae"] < 0.4  # top-1 noise is N(0, 0.3²): MAE ≈ 0.24


def test_fits_json_recovers_overfitting(fits: dict[str, Any]) -> None:
    over = fits["overfitting"]
    flagged = {(r["model"], r["data"]) for r in over["by_model_data"] if r["overfits"]}
    assert flagged == OVERFIT_PAIRS
    for r in over["by_model_data"]:
        if (r["model"], r["data"]) in OVERFIT_PAIRS:
            assert r["best_iterations"] == 2000 and r["curve"]["turn_step"] == 2000


def test_fits_json_recovers_the_power_law(fits: dict[str, Any]) -> None:
    entry = next(
        e for e in fits["scaling"]["vs_data"] if e["model"] == "tiny" and e["iterations"] == 1000
    )
    # in22k is another distribution: beside the series, not on it
    assert entry["n_train_images"] == [v for k, v in DATA.items() if k != "in22k"]
    assert [o["data"] for o in entry["other_data"]] == ["in22k"]
    assert fits["scaling"]["data_family"]["apart"] == ["in22k"]
    fit = entry["val_loss_fit"]
    assert fit["E"] == pytest.approx(E_MODEL["tiny"] + 0.02, rel=1e-4)
    assert fit["A"] == pytest.approx(A * 1e6**ALPHA, rel=1e-3)
    assert fit["alpha"] == pytest.approx(ALPHA, rel=1e-4)
    sizes = {e["data"]: e for e in fits["scaling"]["vs_model_size"]}
    assert sizes["in22k"]["model"] == ["tiny", "small", "base"]


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert page.count("plotly.js v") == 1  # the library is embedded once
    assert not re.findall(r"<script[^>]*\ssrc=", page) and "<link" not in page  # nothing fetched
    for name in FIGURES:
        assert f'id="fig-{name}"' in page
    assert "mimscale analysis — synthetic" in page
    assert "Overfitting in 2 of 15 (model, data) pairs" in page
    assert "extra-failed" in page  # the excluded cells are listed


def test_outputs_are_deterministic(study: Path, report: Path, tmp_path: Path) -> None:
    again = write_report(study, tmp_path)
    assert again.read_bytes() == report.read_bytes()
    assert (tmp_path / "fits.json").read_bytes() == (report.parent / "fits.json").read_bytes()


def test_external_table_without_curves(tmp_path: Path) -> None:
    report = write_report(external_table(tmp_path / "pub.csv"), tmp_path / "out")
    fits = _strict_json(tmp_path / "out" / "fits.json")
    assert fits["study"] is None and fits["cells"]["with_curves"] == 0
    flagged = {
        (r["model"], r["data"]) for r in fits["overfitting"]["by_model_data"] if r["overfits"]
    }
    assert flagged == OVERFIT_PAIRS  # from the cells across lengths alone
    assert "end-of-training losses across lengths" in report.read_text()


def _small_table(path: Path) -> Path:
    """Nine cells, no curves: enough for the tests that only need a report to fail."""
    synthetic_cells().query("model == 'tiny' and data.str.startswith('in1k-')").head(9).to_csv(
        path, index=False
    )
    return path


def test_error_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    import analysis.html

    def broken(*args: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(analysis.html, "render_report", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(_small_table(tmp_path / "t.csv"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_png_without_browser_fails_before_writing(tmp_path: Path, monkeypatch) -> None:
    import analysis.export

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("previous report")
    monkeypatch.setattr(analysis.export, "find_browser", lambda: None)
    with pytest.raises(AnalysisError, match=r"no Chromium found\. .*apt-get install chromium"):
        write_report(_small_table(tmp_path / "t.csv"), out, png=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "previous report"


def test_cli_analyze_writes_the_report(study: Path, tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(study), "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    assert (tmp_path / "fits.json").is_file()


def test_cli_user_error_exits_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "pub.csv"
    synthetic_cells().drop(columns=["finetune_top1"]).to_csv(bad, index=False)
    assert main(["analyze", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing column 'finetune_top1'" in err
    assert not (tmp_path / "out").exists()


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, analysis.cli; "
        "heavy = {'plotly', 'pandas', 'scipy', 'numpy', 'kaleido'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_to_uris(tmp_path: Path, monkeypatch) -> None:
    import pyarrow.fs as pafs

    import analysis.report

    table = _small_table(tmp_path / "t.csv")
    local = write_report(table, (tmp_path / "local").as_uri())
    assert local == tmp_path / "local" / "report.html" and local.is_file()
    # A remote store (s3://, gs://) stands in as a sub-tree of the local disk.
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    fake = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    monkeypatch.setattr(analysis.report, "filesystem", lambda uri: (fake, "runs/x/report"))
    remote = write_report(table, "s3://bucket/runs/x/report")
    assert remote == "s3://bucket/runs/x/report/report.html"
    written = sorted(p.name for p in (bucket / "runs/x/report").iterdir())
    assert written == ["fits.json", "report.html"]  # no temp files left behind


def test_unwritable_output_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AnalysisError, match=r"file/out: cannot create the directory: .*file is a"):
        write_report(_small_table(tmp_path / "t.csv"), blocker / "out")


def test_cli_help_lists_the_required_columns() -> None:
    import analysis.cli
    from analysis.validate import CELL_COLUMNS, OPTIONAL_CELL_COLUMNS

    assert tuple(CELL_COLUMNS) == analysis.cli.REQUIRED_COLUMNS
    assert set(analysis.cli.OPTIONAL_COLUMNS) <= set(OPTIONAL_CELL_COLUMNS)
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
