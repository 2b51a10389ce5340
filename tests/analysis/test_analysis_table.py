"""Loading results: study directories, external tables, and every error by its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import external_table, synthetic_cells, synthetic_curves, write_study

from analysis.errors import AnalysisError
from analysis.table import load_results

REQUIRED = [
    "model",
    "params_m",
    "data",
    "n_train_images",
    "iterations",
    "val_loss",
    "finetune_top1",
]


def _csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def test_study_directory_loads_complete_cells_and_curves(tmp_path: Path) -> None:
    results = load_results(write_study(tmp_path / "study"))
    assert len(results.cells) == 45 and results.n_rows == 47
    assert results.excluded == {"failed": 1, "running": 1}
    assert "2 cells excluded from the fits (status: 1 failed, 1 running)" in results.notes
    assert list(results.excluded_cells["cell_id"]) == ["extra-failed", "extra-running"]
    assert results.study == {"name": "synthetic", "hash": "abc123"}
    assert set(results.curves["phase"]) == {"pretrain"} and set(results.curves["metric"]) == {
        "loss"
    }
    assert results.curves["cell_id"].nunique() == 45
    assert results.cells["params_m"].is_monotonic_increasing


def test_external_csv_with_only_required_columns(tmp_path: Path) -> None:
    results = load_results(external_table(tmp_path / "published.csv"))
    assert len(results.cells) == 45 and results.curves is None and results.excluded == {}
    assert results.cells["cell_id"].is_unique
    assert "tiny/in1k-10pct/1000" in set(results.cells["cell_id"])


def test_external_parquet_with_separate_curves(tmp_path: Path) -> None:
    cells = synthetic_cells()
    cells.to_parquet(tmp_path / "cells.pq", index=False)
    _csv(tmp_path / "curves.csv", synthetic_curves(cells))
    results = load_results(tmp_path / "cells.pq", curves=tmp_path / "curves.csv")
    assert results.curves is not None and results.curves["cell_id"].nunique() == 45


def test_dataframe_source_and_an_exact_repeat_merged_with_a_note() -> None:
    df = synthetic_cells()[REQUIRED].head(3)
    df = pd.concat([df, df.head(1)], ignore_index=True)  # the same cell listed twice
    results = load_results(df)
    assert results.source == "cells table"
    assert sorted(results.cells["cell_id"]) == [
        "tiny/in1k-10pct/1000",
        "tiny/in1k-10pct/2000",
        "tiny/in1k-10pct/4000",
    ]
    assert any("1 rows repeated another row exactly and were merged into it (rows 0, 3)" in n
               for n in results.notes)  # fmt: skip


def test_fractional_accuracies_become_percent() -> None:
    df = synthetic_cells()
    df["finetune_top1"] /= 100
    results = load_results(df)
    assert results.cells["finetune_top1"].between(60, 80).all()
    assert results.cells["finetune_top5"].eq(99.0).all()  # top-5 was percent: left alone
    assert "finetune_top1: fractions in [0, 1]; converted to percent" in results.notes


def test_missing_columns_are_all_listed_with_the_file_name(tmp_path: Path) -> None:
    path = _csv(tmp_path / "pub.csv", synthetic_cells().drop(columns=["val_loss", "params_m"]))
    with pytest.raises(
        AnalysisError,
        match=r"pub\.csv: missing column 'params_m' \(number\); "
        r"missing column 'val_loss' \(number\)",
    ):
        load_results(path)


def test_wrong_dtype_names_column_value_and_row(tmp_path: Path) -> None:
    df = synthetic_cells()
    df["val_loss"] = df["val_loss"].astype(object)
    df.loc[2, "val_loss"] = "n/a?"
    path = _csv(tmp_path / "pub.csv", df)
    with pytest.raises(
        AnalysisError,
        match=r"pub\.csv: column 'val_loss' must be a number, got str 'n/a\?' \(line 4\)",
    ):
        load_results(path)


def test_text_that_is_not_a_number_is_an_error_in_parquet(tmp_path: Path) -> None:
    df = synthetic_cells()
    df["iterations"] = df["iterations"].astype(str)
    df.loc[5, "iterations"] = "4k"
    df.to_parquet(tmp_path / "cells.parquet", index=False)
    with pytest.raises(
        AnalysisError,
        match=r"cells\.parquet: column 'iterations' must be a number, got str '4k' \(row 5\)",
    ):
        load_results(tmp_path)


def test_text_that_spells_numbers_is_accepted() -> None:
    df = synthetic_cells()
    df["iterations"] = df["iterations"].astype(str)
    assert load_results(df).cells["iterations"].dtype == float


def test_booleans_are_not_numbers() -> None:
    df = synthetic_cells()
    df["params_m"] = True
    with pytest.raises(AnalysisError, match="column 'params_m' must be a number, got true/false"):
        load_results(df)


def test_empty_table(tmp_path: Path) -> None:
    path = _csv(tmp_path / "empty.csv", synthetic_cells().head(0))
    with pytest.raises(AnalysisError, match=r"empty\.csv: the table is empty \(no rows\)"):
        load_results(path)


def test_header_only_file_without_columns(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("")
    with pytest.raises(AnalysisError, match=r"blank\.csv: cannot read table: No columns"):
        load_results(path)


def test_a_csv_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = _csv(tmp_path / "latin1.csv", synthetic_cells().head(3))
    lines = path.read_text().splitlines()
    lines[2] = "\u00e9" + lines[2]  # a Latin-1 byte on line 3
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(AnalysisError, match=r"latin1\.csv: line 3: not UTF-8 text \(byte 0xe9\)"):
        load_results(path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(AnalysisError, match=r"broken\.parquet: cannot read table: "):
        load_results(path)


def test_missing_file_and_unsupported_format(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match=r"nope\.csv: no such file or directory"):
        load_results(tmp_path / "nope.csv")
    (tmp_path / "cells.xlsx").write_bytes(b"")
    with pytest.raises(
        AnalysisError,
        match=r"unsupported table format '\.xlsx'; expected one of "
        r"\.csv, \.parquet, \.pq",
    ):
        load_results(tmp_path / "cells.xlsx")
    with pytest.raises(AnalysisError, match=r"no cells\.parquet"):
        load_results(tmp_path)


def test_no_complete_cells(tmp_path: Path) -> None:
    df = synthetic_cells()
    df["status"] = np.where(df.index % 2, "failed", "running")
    with pytest.raises(
        AnalysisError, match=r"no complete cells to analyse \(status: 23 failed, 24 running\)"
    ):
        load_results(df)


def test_null_keys_and_non_positive_sizes(tmp_path: Path) -> None:
    df = synthetic_cells()
    df.loc[[0, 4], "model"] = None
    df.loc[1, "n_train_images"] = 0
    with pytest.raises(
        AnalysisError,
        match=r"t\.csv: lines 2, 6: column 'model' is empty; "
        r"line 3: column 'n_train_images' must be in \(0, inf\), got 0",
    ):
        load_results(_csv(tmp_path / "t.csv", df))


def test_duplicate_cell_ids() -> None:
    df = synthetic_cells()
    df.loc[1, "cell_id"] = df.loc[0, "cell_id"]
    with pytest.raises(
        AnalysisError, match=r"rows 0, 1: duplicate cell_id \['tiny/in1k-10pct/1000'\]"
    ):
        load_results(df)


def test_curves_errors_name_the_curves_file(tmp_path: Path) -> None:
    _csv(tmp_path / "curves.csv", synthetic_curves(synthetic_cells()).drop(columns=["step"]))
    with pytest.raises(AnalysisError, match=r"curves\.csv: missing column 'step' \(number\)"):
        load_results(synthetic_cells(), curves=tmp_path / "curves.csv")


def test_missing_measurements_are_kept_and_noted() -> None:
    df = synthetic_cells()
    df.loc[[3, 7], "finetune_top1"] = np.nan
    results = load_results(df)
    assert len(results.cells) == 45
    assert "2 complete cells have no finetune_top1; fits that need it skip them" in results.notes


def test_study_directory_as_a_uri(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    results = load_results(root.as_uri())
    assert len(results.cells) == 45 and results.curves is not None
    assert results.study == {"name": "synthetic", "hash": "abc123"}
    with pytest.raises(AnalysisError, match=r"nope\.parquet: no such file or directory"):
        load_results((tmp_path / "nope.parquet").as_uri())
