"""``mimscale analyze`` of a CSV cut short (found by an adversarial pass over the CLI's
inputs: a table truncated inside its last row was analysed with exit 0, that row's missing
fields read as empty by pandas, its cut number taken as its value)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import synthetic_cells, write_study

from analysis.errors import AnalysisError
from analysis.table import load_results
from scaling.cli import main


def _cut(tmp_path: Path, keep: int) -> Path:
    """The synthetic cells as CSV, cut ``keep`` characters into its last row."""
    path = tmp_path / "cells.csv"
    synthetic_cells().to_csv(path, index=False)
    text = path.read_text()
    start = text.rstrip("\n").rindex("\n") + 1
    path.write_text(text[: start + keep])
    return path


@pytest.mark.parametrize("keep", [5, 30, 45])
def test_a_csv_cut_inside_its_last_row_is_refused(tmp_path: Path, keep: int) -> None:
    path = _cut(tmp_path, keep)
    n_lines = len(path.read_text().splitlines())
    width = len(path.read_text().splitlines()[0].split(","))
    with pytest.raises(
        AnalysisError,
        match=rf"^{path}: line {n_lines}: \d+ fields, the header has {width} \(a file cut short",
    ):
        load_results(path)


def test_the_cli_says_where_and_writes_nothing(tmp_path: Path, capsys) -> None:
    path, out = _cut(tmp_path, 30), tmp_path / "report"
    assert main(["analyze", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fields, the header has" in err and "Traceback" not in err
    assert not out.exists()


def test_an_intact_csv_with_empty_optional_values_still_loads(tmp_path: Path) -> None:
    intact, path = tmp_path / "intact.csv", tmp_path / "cells.csv"
    cells = synthetic_cells()
    cells.to_csv(intact, index=False)
    cells.loc[0, "finetune_top5"] = None  # an empty field: the row keeps every comma
    cells.to_csv(path, index=False)
    assert len(load_results(path).cells) == len(load_results(intact).cells)


def _with_checksums(path: Path) -> bytes:
    """Rewrite a table as the results store writes it (page checksums), uncompressed."""
    pq.write_table(pq.read_table(path), path, compression="none", write_page_checksum=True)
    return path.read_bytes()


@pytest.mark.parametrize("table", ["curves.parquet", "cells.parquet"])
def test_a_flipped_value_in_a_checksummed_table_is_refused(tmp_path: Path, table: str) -> None:
    """A flipped byte inside curves.parquet's values was analysed with exit 0 (pandas
    reads without checking the page checksums the results store writes)."""
    study = write_study(tmp_path / "study")
    path = study / table
    data = bytearray(_with_checksums(path))
    column = "value" if table == "curves.parquet" else "val_loss"
    first = float(pq.read_table(path, columns=[column]).column(0)[0].as_py())
    at = bytes(data).index(np.float64(first).tobytes())
    data[at + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(AnalysisError, match=rf"{path}: cannot read table: .*CRC checksum"):
        load_results(study)


@pytest.mark.parametrize("table", ["cells.parquet", "curves.parquet", "diagnostics.parquet"])
def test_a_folder_in_place_of_a_table_is_named(tmp_path: Path, table: str, capsys) -> None:
    """A folder named curves.parquet (or diagnostics.parquet) was skipped without a word
    and the report written without curves; cells.parquet's said 'no cells.parquet'."""
    study = write_study(tmp_path / "study")
    (study / table).unlink(missing_ok=True)
    (study / table).mkdir()
    out = tmp_path / "report"
    assert main(["analyze", str(study), "-o", str(out)]) == 2
    assert f"error: {study}/{table}: is a folder, not a table" in capsys.readouterr().err
    assert not out.exists()
