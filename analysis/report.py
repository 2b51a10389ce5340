"""Run every fit, build the figures and write ``fits.json``, ``report.html`` (and PNGs).

``write_report`` is the entry point for both ``mimscale analyze`` and the study runner
(which calls it after ``mimscale run``). Everything is computed and rendered in memory
first, then each file is written atomically, so an error leaves no half-written report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from analysis import export, figures, html
from analysis.errors import AnalysisError
from analysis.fits import (
    CONFIDENCE,
    N_RESAMPLES,
    fit_correlations,
    fit_linear,
    ranking_agreement,
    split_correlation,
)
from analysis.intervals import BOOTSTRAP_MIN_N
from analysis.overfit import PATIENCE, REL_TOL, WINDOW, fit_overfitting
from analysis.proxies import fit_methods
from analysis.reference import compare, load_reference, reference
from analysis.scaling_fit import MIN_DOF, fit_scaling
from analysis.table import Results, load_results

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
REPORT_NAME, FITS_NAME = "report.html", "fits.json"
# Figure number in the report -> PNG name prefix, so files sort in report order.
PNG_NAME = "fig{n}_{name}.png"


def analyze(
    results: Results,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    published: Results | None = None,
    reference_name: str | None = None,
) -> dict[str, Any]:
    """Every fit of the analysis, as the dict written to ``fits.json``; with ``published``
    (the cells of reference ``reference_name``), the per-cell comparison too."""
    kwargs = {"seed": seed, "n_resamples": n_resamples, "confidence": confidence}
    cells, targets = _primary_target(results.cells, **kwargs)
    overfitting = fit_overfitting(cells, results.curves)
    pairs = {(r["model"], r["data"]) for r in overfitting["by_model_data"] if r["overfits"]}
    fits = {
        "format_version": FORMAT_VERSION,
        "source": results.source,
        "study": _study_summary(results.study),
        "cells": {
            "rows": results.n_rows,
            "complete": len(cells),
            "excluded": results.excluded,
            "with_curves": 0
            if results.curves is None
            else int(results.curves["cell_id"].nunique()),
            "max_seeds": results.n_seeds,
        },
        "settings": {
            "seed": seed,
            "n_resamples": n_resamples,
            "confidence": confidence,
            "overfit_rel_tol": REL_TOL,
            "overfit_patience": PATIENCE,
            "overfit_window": WINDOW,
            "correlation_intervals": f"closed form on Fisher's z below {BOOTSTRAP_MIN_N} "
            "cells (Pearson: Fisher; Spearman: Bonett-Wright; Kendall: Fieller), paired "
            f"BCa bootstrap from {BOOTSTRAP_MIN_N} cells",
            "power_law_intervals": f"linearised, only with >= {MIN_DOF} degrees of freedom "
            "and no parameter at a bound",
        },
        "notes": list(results.notes),
        "correlation": fit_correlations(cells, **kwargs),
        "correlation_split": split_correlation(cells, pairs, **kwargs),
        "linear_fit": fit_linear(cells),
        "ranking": ranking_agreement(cells),
        "overfitting": overfitting,
        "scaling": fit_scaling(cells, confidence=confidence),
        "methods": fit_methods(cells, results.curves, results.diagnostics, **kwargs),
        "targets": targets,
        "reference": None,
    }
    if published is not None and reference_name is not None:
        fits["reference"] = compare(cells, published.cells, reference_name)
    return fits


def _primary_target(
    cells: pd.DataFrame, **kwargs: Any
) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Cells fine-tuned on several targets (``target`` column): the analysis runs on the
    primary one (most cells; the first listed on a tie), and each target gets its own
    val-loss ↔ top-1 correlation (accuracies of different data sets are not one scale)."""
    if "target" not in cells or cells["target"].nunique(dropna=True) < 2:
        return cells, None
    counts = cells["target"].value_counts(sort=False)
    primary = str(counts.idxmax())
    per_target = {
        str(name): fit_correlations(group, **kwargs)
        for name, group in cells.groupby("target", sort=False)
    }
    note = (
        f"{len(counts)} fine-tuning targets; the report's figures and fits use {primary!r}, "
        "each target's correlation is under 'targets'"
    )
    return cells[cells["target"] == primary], {
        "primary": primary,
        "by_target": per_target,
        "note": note,
    }


def write_report(
    source: str | Path | pd.DataFrame | None,
    out_dir: str | Path,
    png: bool = False,
    *,
    curves: str | Path | pd.DataFrame | None = None,
    seed: int = 0,
    reference_name: str | None = None,
) -> Path | str:
    """Analyse SOURCE and write ``fits.json``, ``report.html`` (and PNGs) into OUT_DIR.

    SOURCE is a study results directory, a CSV/Parquet table of cells or a DataFrame
    (columns: see :mod:`analysis.table`); ``curves`` an optional curves table for an
    external SOURCE. ``reference_name`` (see :mod:`analysis.reference`) overlays a
    published table and compares matching cells; with SOURCE None the published table
    itself is analysed. OUT_DIR is a local directory or a URI pyarrow can write to.
    OUT_DIR is checked before the analysis starts and the files appear together at the
    end. Returns the path of ``report.html`` (its URI for a remote OUT_DIR). Raises
    ``AnalysisError`` on bad input or, with ``png``, when no browser can render figures.
    """
    if source is None and reference_name is None:
        raise AnalysisError("analyze: give a SOURCE, or --reference NAME to analyse a reference")
    if reference_name is not None:
        reference(reference_name)  # an unknown name fails before any work
    check_out_dir(out_dir)
    published = load_reference(reference_name) if reference_name else None
    if source is None:
        results, published = published, None
    else:
        results = load_results(source, curves=curves)
    assert results is not None
    fits = analyze(results, seed=seed, published=published, reference_name=reference_name)
    figs = figures.build_figures(results, fits, published)
    page = html.render_report(results, fits, figs)
    text = json.dumps(to_jsonable(fits), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    pngs = export.render_pngs(figs) if png else {}
    files = {PNG_NAME.format(n=n, name=k): v for n, (k, v) in enumerate(pngs.items(), start=1)}
    files[FITS_NAME] = text.encode()
    files[REPORT_NAME] = page.encode()  # last: once it is there, so is the rest
    report = _write_all(out_dir, files)
    log.info("wrote %s and %d other files", report, len(files) - 1)
    return report


def check_out_dir(out_dir: str | Path) -> None:
    """OUT must be a directory or creatable as one; checked before any analysis."""
    text = str(out_dir)
    if "://" in text and not text.startswith("file://"):
        return  # object stores have no directories to check
    out = Path(filesystem(text)[1]) if text.startswith("file://") else Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"{text}: exists and is not a directory; -o needs a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise AnalysisError(f"{text}: cannot create the directory: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AnalysisError(f"{text}: cannot write the report: {parent} is not writable")


def _write_all(out_dir: str | Path, files: dict[str, bytes]) -> Path | str:
    """Write the files into a temp directory beside OUT, then move them in together."""
    text = str(out_dir)
    try:
        if "://" in text and not text.startswith("file://"):
            fs, base = filesystem(text)
            _write_remote(fs, base.rstrip("/"), files)
            return f"{text.rstrip('/')}/{REPORT_NAME}"
        out = Path(filesystem(text)[1]) if "://" in text else Path(out_dir)
        _write_local(out, files)
        return out / REPORT_NAME
    except OSError as err:
        raise AnalysisError(f"{text}: cannot write the report: {err}") from err


def _write_local(out: Path, files: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            (tmp / name).chmod(0o644)  # reports are shared
        if not out.exists():
            tmp.chmod(0o755)
            tmp.rename(out)  # a new OUT appears whole
            return
        for name in files:  # an existing OUT: report.html moves in last
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and path of a URI (``file://``, ``s3://``, ``gs://`` …)."""
    return pafs.FileSystem.from_uri(uri)


def _write_remote(fs: pafs.FileSystem, base: str, files: dict[str, bytes]) -> None:
    fs.create_dir(base, recursive=True)
    for name, data in files.items():
        tmp = f"{base}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with fs.open_output_stream(tmp) as stream:
                stream.write(data)
            fs.move(tmp, f"{base}/{name}")
        finally:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/inf as null, keys as text."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _study_summary(study: dict[str, Any] | None) -> dict[str, Any] | None:
    """Name and hash of the study, wherever study.json keeps them."""
    if not study:
        return None
    inner = study.get("study") if isinstance(study.get("study"), dict) else {}
    name = study.get("name") or inner.get("name")
    digest = study.get("hash") or study.get("study_hash") or inner.get("hash")
    return {"name": name, "hash": digest}
