"""Load and validate the results tables that the analysis reads.

A SOURCE is one of:

- a study results directory holding ``cells.parquet`` (one row per cell), optionally
  ``curves.parquet`` and ``study.json`` (see DESIGN.md, "Results");
- an external table of cells, ``.csv`` or ``.parquet``/``.pq``, e.g. published results,
  with an optional curves table given separately;
- a ``pandas.DataFrame`` of cells.

Cells columns (``*`` = required; others are used when present):

==================  ========  ===================================================
column              type      meaning
==================  ========  ===================================================
model *             text      model size name, e.g. ``swinv2-b``
params_m *          number    encoder parameters, millions (> 0)
data *              text      train subset name, e.g. ``in1k-20pct``
n_train_images *    number    images in the train subset (> 0)
iterations *        number    pre-training length in iterations (> 0)
val_loss *          number    masked-L1 validation loss at the end of pre-training
finetune_top1 *     number    fine-tuned top-1 accuracy, percent (fractions in
                              [0, 1] are detected and converted to percent)
cell_id             text      unique id; generated from model/data/iterations if absent
status              text      only ``complete`` rows enter the fits
train_loss          number    training loss at the end of pre-training
finetune_top5       number    fine-tuned top-5 accuracy, percent
batch_size, epochs_seen, pretrain_flops, gpu_hours, wall_s: number, shown in the table
==================  ========  ===================================================

Curves columns (long format, one row per logged point): ``cell_id`` (text), ``phase``
(``pretrain``/``finetune``), ``step`` (number), ``split`` (``train``/``val``), ``metric``
(e.g. ``loss``), ``value`` (number), optional ``lr`` (number). Only pre-training
``loss`` points of complete cells are used.

Every problem with a table raises :class:`AnalysisError` naming the file and listing all
the columns at fault at once. Number columns may hold text that spells a number (as a
CSV does); any other text, a boolean, or an empty key column is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from analysis.errors import AnalysisError

log = logging.getLogger(__name__)

TEXT, NUMBER = "text", "number"

CELL_COLUMNS: dict[str, str] = {
    "model": TEXT,
    "params_m": NUMBER,
    "data": TEXT,
    "n_train_images": NUMBER,
    "iterations": NUMBER,
    "val_loss": NUMBER,
    "finetune_top1": NUMBER,
}
OPTIONAL_CELL_COLUMNS: dict[str, str] = {
    "cell_id": TEXT,
    "status": TEXT,
    "train_loss": NUMBER,
    "finetune_top5": NUMBER,
    "batch_size": NUMBER,
    "epochs_seen": NUMBER,
    "pretrain_flops": NUMBER,
    "gpu_hours": NUMBER,
    "wall_s": NUMBER,
}
CURVE_COLUMNS: dict[str, str] = {
    "cell_id": TEXT,
    "phase": TEXT,
    "step": NUMBER,
    "split": TEXT,
    "metric": TEXT,
    "value": NUMBER,
}
OPTIONAL_CURVE_COLUMNS: dict[str, str] = {"lr": NUMBER}
# Identify a cell; a null here is a broken table, not a missing measurement.
KEY_COLUMNS = ("model", "params_m", "data", "n_train_images", "iterations")
POSITIVE_COLUMNS = ("params_m", "n_train_images", "iterations")
_FILE = pafs.FileType.File
READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


@dataclass(frozen=True)
class Results:
    """Validated results: complete cells only, with their pre-training curves."""

    cells: pd.DataFrame
    """Complete cells, sorted by (params_m, model, n_train_images, data, iterations)."""
    curves: pd.DataFrame | None
    """Curves of those cells, or None when there are none."""
    source: str
    """Where the cells came from, for the report."""
    n_rows: int
    """Rows in the cells table before filtering."""
    excluded: dict[str, int] = field(default_factory=dict)
    """Rows left out of the fits, by status."""
    study: dict[str, Any] | None = None
    """``study.json`` when the source is a study directory."""
    notes: tuple[str, ...] = ()
    """Things the reader of the report should know (conversions, exclusions)."""
    excluded_cells: pd.DataFrame | None = None
    """The rows left out (any status but complete), for the report's table."""


def load_results(
    source: str | Path | pd.DataFrame, curves: str | Path | pd.DataFrame | None = None
) -> Results:
    """Read SOURCE (study directory, CSV/Parquet file or DataFrame) and validate it.

    Paths may be local or URIs that pyarrow understands (``file://``, ``s3://``, ``gs://``),
    like a study's ``output_dir``.
    """
    study = None
    if isinstance(source, pd.DataFrame):
        cells, name = source.copy(), "cells table"
    else:
        fs, path = _resolve(source)
        name = str(source).rstrip("/")
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            study_dir, name = name, f"{name}/cells.parquet"
            if fs.get_file_info(f"{path}/cells.parquet").type != _FILE:
                raise AnalysisError(f"{study_dir}: no cells.parquet (is this a study results dir?)")
            cells = _read(fs, f"{path}/cells.parquet", name)
            if curves is None and fs.get_file_info(f"{path}/curves.parquet").type == _FILE:
                curves = f"{study_dir}/curves.parquet"
            study = _read_study(fs, f"{path}/study.json")
        else:
            cells = _read(fs, path, name)
    n_rows = len(cells)
    cells = validate_cells(cells, name)
    cells, dropped, excluded, notes = _keep_complete(cells, name)
    cells, unit_note = _top1_percent(cells)
    notes += unit_note
    curves_df = None
    if curves is not None:
        curves_name = "curves table" if isinstance(curves, pd.DataFrame) else str(curves)
        raw = curves.copy() if isinstance(curves, pd.DataFrame) else read_table(curves)
        curves_df = validate_curves(raw, curves_name, set(cells["cell_id"]))
    label = name if isinstance(source, pd.DataFrame) else str(source)
    return Results(cells, curves_df, label, n_rows, excluded, study, tuple(notes), dropped)


def read_table(source: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (path or URI); failures become AnalysisErrors naming it."""
    fs, path = _resolve(source)
    return _read(fs, path, str(source))


def _resolve(source: str | Path) -> tuple[pafs.FileSystem, str]:
    text = str(source)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).absolute())
    try:
        return pafs.FileSystem.from_uri(text)
    except Exception as err:
        raise AnalysisError(f"{text}: cannot open: {err}") from err


def _read(fs: pafs.FileSystem, path: str, name: str) -> pd.DataFrame:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in READERS:
        raise AnalysisError(
            f"{name}: unsupported table format {suffix or '(none)'!r}; "
            f"expected one of {', '.join(READERS)} or a study results directory"
        )
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise AnalysisError(f"{name}: no such file or directory")
    try:
        with fs.open_input_file(path) as handle:
            return READERS[suffix](handle)
    except Exception as err:
        raise AnalysisError(f"{name}: cannot read table: {err}") from err


def check_columns(
    df: pd.DataFrame, name: str, required: dict[str, str], optional: dict[str, str]
) -> pd.DataFrame:
    """Check presence and types of columns; return a copy with text columns as str."""
    if df.empty:
        raise AnalysisError(f"{name}: the table is empty (no rows)")
    problems = [f"missing column {c!r} ({kind})" for c, kind in required.items() if c not in df]
    df = df.reset_index(drop=True)
    for col, kind in {**required, **optional}.items():
        if col not in df:
            continue
        if kind == NUMBER:
            problem = _number_problem(df[col])
            if problem:
                problems.append(f"column {col!r} must be a number, {problem}")
            else:
                df[col] = pd.to_numeric(df[col]).astype(float)
        else:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    if problems:
        raise AnalysisError(f"{name}: " + "; ".join(problems))
    return df


def validate_cells(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the cells columns, the keys and the ids; add ``cell_id`` when absent."""
    df = check_columns(df, name, CELL_COLUMNS, OPTIONAL_CELL_COLUMNS)
    problems = []
    for col in KEY_COLUMNS:
        bad = df.index[df[col].isna()]
        if len(bad):
            problems.append(f"column {col!r} is empty in data rows {_rows(bad)}")
    for col in POSITIVE_COLUMNS:
        bad = df.index[df[col] <= 0]
        if len(bad):
            problems.append(f"column {col!r} must be > 0 (data rows {_rows(bad)})")
    if problems:
        raise AnalysisError(f"{name}: " + "; ".join(problems))
    if "cell_id" not in df:
        length = df["iterations"].map(lambda v: str(group_key(v)))
        keys = df["model"] + "/" + df["data"] + "/" + length
        df["cell_id"] = keys + df.groupby(keys).cumcount().map(lambda i: f"#{i}" if i else "")
    dup = df["cell_id"][df["cell_id"].duplicated()]
    if len(dup):
        raise AnalysisError(f"{name}: duplicate cell_id {sorted(set(dup))[:5]}")
    return df.reset_index(drop=True)


def validate_curves(df: pd.DataFrame, name: str, cell_ids: set[str]) -> pd.DataFrame | None:
    """Check the curves columns; keep the pre-training loss points of the given cells."""
    df = check_columns(df, name, CURVE_COLUMNS, OPTIONAL_CURVE_COLUMNS)
    keep = (df["phase"] == "pretrain") & (df["metric"] == "loss") & df["cell_id"].isin(cell_ids)
    df = df[keep & df["value"].notna() & df["step"].notna()]
    if df.empty:
        log.info("%s: no pre-training loss points for the complete cells", name)
        return None
    return df.sort_values(["cell_id", "split", "step"]).reset_index(drop=True)


def _keep_complete(
    df: pd.DataFrame, name: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, int], list[str]]:
    notes: list[str] = []
    excluded: dict[str, int] = {}
    dropped = None
    if "status" in df:
        status = df["status"].fillna("(none)").str.strip().str.lower()
        excluded = {str(k): int(v) for k, v in status[status != "complete"].value_counts().items()}
        dropped = df[status != "complete"].reset_index(drop=True)
        df = df[status == "complete"]
        if excluded:
            what = ", ".join(f"{n} {s}" for s, n in sorted(excluded.items()))
            notes.append(f"{sum(excluded.values())} cells excluded from the fits (status: {what})")
            log.info("%s: %s", name, notes[-1])
    if df.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(excluded.items()))
        raise AnalysisError(f"{name}: no complete cells to analyse (status: {statuses})")
    for col in ("val_loss", "finetune_top1"):
        n = int(df[col].isna().sum())
        if n:
            notes.append(f"{n} complete cells have no {col}; fits that need it skip them")
    order = ["params_m", "model", "n_train_images", "data", "iterations", "cell_id"]
    df = df.sort_values(order, kind="stable").reset_index(drop=True)
    return df, dropped if dropped is not None and len(dropped) else None, excluded, notes


def _top1_percent(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Accuracies in [0, 1] are fractions: a fine-tuned top-1 below 1% is not plausible."""
    cols = [c for c in ("finetune_top1", "finetune_top5") if c in df]
    top1 = df["finetune_top1"].dropna()
    if top1.empty or top1.max() > 1.0 or top1.min() < 0.0:
        return df, []
    df = df.copy()
    for col in cols:
        df[col] = df[col] * 100.0
    return df, ["finetune accuracies were fractions in [0, 1]; converted to percent"]


def _number_problem(col: pd.Series) -> str | None:
    """Why a column is not numeric, or None. Text that spells a number is accepted:
    a CSV column with one stray word is read as text throughout, and the word is the error."""
    if pd.api.types.is_bool_dtype(col):
        return "got true/false"
    if pd.api.types.is_numeric_dtype(col):
        return None
    present = col.dropna()
    bad = present[pd.to_numeric(present, errors="coerce").isna() | present.map(_is_bool)]
    if bad.empty:
        return None
    value = bad.iloc[0]
    return f"got {type(value).__name__} {value!r} in data row {_row(bad.index[0])}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _row(label: Any) -> str:
    """Rows are numbered from 1 after the header, as a spreadsheet user counts them."""
    return str(label + 1) if isinstance(label, int | np.integer) else str(label)


def _rows(index: pd.Index) -> str:
    shown = ", ".join(_row(i) for i in index[:5])
    return shown + (f" and {len(index) - 5} more" if len(index) > 5 else "")


def _read_study(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    if fs.get_file_info(path).type != _FILE:
        return None
    try:
        with fs.open_input_stream(path) as handle:
            study = json.loads(handle.read())
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); the report will not name the study", path, err)
        return None
    return study if isinstance(study, dict) else None


def group_key(value: Any) -> Any:
    """A group value as fits.json shows it: text as is, whole numbers as int."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value
