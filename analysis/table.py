"""Load the results tables that the analysis reads; validation is :mod:`analysis.validate`.

A SOURCE is one of:

- a study results directory holding ``cells.parquet`` (one row per cell), optionally
  ``curves.parquet`` and ``study.json`` (see DESIGN.md, "Results");
- an external table of cells, ``.csv`` (comma-separated, one row per cell) or
  ``.parquet``/``.pq``, e.g. published results, with an optional curves table;
- a ``pandas.DataFrame`` of cells.

Cells columns (``*`` = required; others are used when present):

==================  ========  ===================================================
column              type      meaning
==================  ========  ===================================================
model *             text      model size name, e.g. ``swinv2-b``
params_m *          number    encoder parameters, millions (> 0)
data *              text      train subset name, e.g. ``in1k-20pct``; names outside
                              the ``<prefix>-<pct>pct`` family of the others (e.g.
                              ``in22k``) are another distribution (see scaling_fit)
n_train_images *    number    images in the train subset (> 0, one value per data)
iterations *        number    pre-training length in iterations (> 0)
val_loss *          number    masked-L1 validation loss at the end of pre-training (≥ 0)
finetune_top1 *     number    fine-tuned top-1 accuracy, percent in [0, 100] (fractions
                              in [0, 1] throughout are detected and converted)
cell_id             text      unique id; generated from model/data/iterations if absent
seed                number    replicate seed: several seeds of one (model, data,
                              iterations) are aggregated (mean ± sd per cell)
status              text      only ``complete`` rows enter the fits
method              text      MIM method (``simmim`` when absent): a grouping, see
                              :mod:`analysis.proxies`
train_loss          number    training loss at the end of pre-training (≥ 0)
finetune_top5       number    fine-tuned top-5 accuracy, percent
batch_size, epochs_seen, pretrain_flops, gpu_hours, wall_s: number (≥ 0), shown in the table
==================  ========  ===================================================

Curves columns (long format, one row per logged point): ``cell_id`` (text), ``phase``
(``pretrain``/``finetune``), ``step`` (number), ``split`` (``train``/``val``), ``metric``
(e.g. ``loss``), ``value`` (number), optional ``lr`` (number). Only pre-training
``loss`` points of complete cells are used.

A study directory's ``diagnostics.parquet`` (long format: ``cell_id``, ``layer``, ``head``,
``other``, ``metric``, ``value``; summary scalars at layer −1) feeds the proxy ranking and
the per-layer diagnostics figure.

Every problem raises :class:`AnalysisError` naming the file and where in it: the CSV
line (the header is line 1) or the Parquet/DataFrame row index (from 0).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.errors import AnalysisError
from scaling.errors import decode_text

log = logging.getLogger(__name__)

WHERE = "_where"  # column: where each row came from ("line 5", "row 4"), for messages
_FILE = pafs.FileType.File
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Results:
    """Validated results: complete cells only (replicates aggregated), with their curves."""

    cells: pd.DataFrame
    """Complete cells, sorted by (params_m, model, n_train_images, data, iterations)."""
    curves: pd.DataFrame | None
    """Curves of those cells (replicates' curves under the aggregate id), or None."""
    source: str
    """Where the cells came from, for the report."""
    n_rows: int
    """Rows in the cells table before filtering."""
    excluded: dict[str, int] = field(default_factory=dict)
    """Rows left out of the fits, by status."""
    study: dict[str, Any] | None = None
    """``study.json`` when the source is a study directory."""
    notes: tuple[str, ...] = ()
    """Things the reader of the report should know (conversions, merges, exclusions)."""
    excluded_cells: pd.DataFrame | None = None
    """The rows left out (any status but complete), for the report's table."""
    n_seeds: int = 1
    """Most replicates of one cell; > 1 when cells are means over seeds."""
    diagnostics: pd.DataFrame | None = None
    """``diagnostics.parquet`` of a study directory (long format; cell ids of the cells
    above, replicates averaged), or None."""


def load_results(
    source: str | Path | pd.DataFrame, curves: str | Path | pd.DataFrame | None = None
) -> Results:
    """Read SOURCE (study directory, CSV/Parquet file or DataFrame) and validate it.

    Paths may be local or URIs that pyarrow understands (``file://``, ``s3://``, ``gs://``),
    like a study's ``output_dir``.
    """
    from analysis.validate import prepare_cells, validate_curves

    study = diagnostics = None
    if isinstance(source, pd.DataFrame):
        cells, name = _indexed(source.copy(), "row"), "cells table"
    else:
        fs, path = _resolve(source)
        name = str(source).rstrip("/")
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            study_dir, name = name, f"{name}/cells.parquet"
            if not _table_in(fs, path, study_dir, "cells.parquet"):
                raise AnalysisError(f"{study_dir}: no cells.parquet (is this a study results dir?)")
            cells = _read(fs, f"{path}/cells.parquet", name)
            if curves is None and _table_in(fs, path, study_dir, "curves.parquet"):
                curves = f"{study_dir}/curves.parquet"
            study = _read_study(fs, f"{path}/study.json")
            if _table_in(fs, path, study_dir, "diagnostics.parquet"):
                diagnostics = _read(
                    fs, f"{path}/diagnostics.parquet", f"{study_dir}/diagnostics.parquet"
                )
        else:
            cells = _read(fs, path, name)
    n_rows = len(cells)
    prepared = prepare_cells(cells, name)
    curves_df = None
    if curves is not None:
        curves_name = "curves table" if isinstance(curves, pd.DataFrame) else str(curves)
        raw = _indexed(curves.copy(), "row") if isinstance(curves, pd.DataFrame) else None
        raw = read_table(curves) if raw is None else raw
        curves_df = validate_curves(raw, curves_name, prepared.id_map)
    label = name if isinstance(source, pd.DataFrame) else str(source)
    return Results(
        prepared.cells,
        curves_df,
        label,
        n_rows,
        prepared.excluded,
        study,
        tuple(prepared.notes),
        prepared.dropped,
        prepared.n_seeds,
        _diagnostics_of(diagnostics, prepared.id_map),
    )


def _table_in(fs: pafs.FileSystem, path: str, study_dir: str, table: str) -> bool:
    """Whether the study directory holds ``table``; something else by its name is an error."""
    kind = fs.get_file_info(f"{path}/{table}").type
    if kind not in (_FILE, pafs.FileType.NotFound):
        raise AnalysisError(f"{study_dir}/{table}: is a folder, not a table")
    return kind == _FILE


def _diagnostics_of(table: pd.DataFrame | None, id_map: dict[str, str]) -> pd.DataFrame | None:
    """Diagnostics rows of the analysed cells under their (aggregate) ids, seeds averaged."""
    if table is None or table.empty:
        return None
    keys = ["cell_id", "layer", "head", "other", "metric"]
    table = table.assign(cell_id=table["cell_id"].astype(str).map(id_map)).dropna(
        subset=["cell_id"]
    )
    return table.groupby(keys, sort=False, as_index=False)["value"].mean()


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


def _utf8(data: bytes, name: str) -> str:
    """A CSV's text; not UTF-8: the line and the byte."""
    return decode_text(
        data,
        lambda line, _, byte: AnalysisError(
            f"{name}: line {line}: not UTF-8 text (byte 0x{byte:02x}); save the table as UTF-8"
        ),
    )


def _read(fs: pafs.FileSystem, path: str, name: str) -> pd.DataFrame:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise AnalysisError(
            f"{name}: unsupported table format {suffix or '(none)'!r}; "
            f"expected one of {', '.join(TABLE_SUFFIXES)} or a study results directory"
        )
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise AnalysisError(f"{name}: no such file or directory")
    try:
        with fs.open_input_file(path) as handle:
            if suffix != ".csv":
                # the page checksums mimscale writes: a flipped value is an error, not data
                table = pq.read_table(handle, page_checksum_verification=True)
                return _indexed(table.to_pandas(), "row")
            data = handle.read()
        text = blank_comments(_utf8(data, name))
        df = pd.read_csv(io.StringIO(text))
    except AnalysisError:
        raise
    except Exception as err:
        raise AnalysisError(f"{name}: cannot read table: {err}") from err
    lines = csv_lines(text, name)
    if len(lines) != len(df):  # a quoted field spanning lines: count records instead
        lines = list(range(2, len(df) + 2))
    df[WHERE] = [f"line {n}" for n in lines]
    return df


def blank_comments(text: str) -> str:
    """Lines starting with '#' (a file's header notes) become blank: pandas skips them
    and the line numbers of the data stay those of the file."""
    return "\n".join("" if ln.startswith("#") else ln for ln in text.split("\n"))


def csv_lines(text: str, name: str = "") -> list[int]:
    """The line number (in the file, from 1) of each data record of a CSV, skipping
    blank lines as pandas does. A record with fewer fields than the header is an error
    (pandas would fill them with NaN: a file cut short would lose its last cell's values)."""
    out, width = [], 0
    reader = csv.reader(io.StringIO(text))
    for record in reader:
        if not record or all(not v.strip() for v in record):
            continue
        if width and len(record) < width:
            raise AnalysisError(
                f"{name}: line {reader.line_num}: {len(record)} fields, the header has "
                f"{width} (a file cut short?)"
            )
        if width:
            out.append(reader.line_num)
        width = width or len(record)
    return out


def _indexed(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df[WHERE] = [f"{kind} {i}" for i in range(len(df))]
    return df


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
