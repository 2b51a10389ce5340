"""Run every fit, build the figures and write ``fits.json``, ``report.html`` (and PNGs).

``write_report`` is the entry point for both ``mimscale analyze`` and the study runner
(which calls it after ``mimscale run``). Everything is computed and rendered in memory
first, then each file is written atomically, so an error leaves no half-written report.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from analysis import export, figures, html
from analysis.errors import AnalysisError
from analysis.fits import CONFIDENCE, N_RESAMPLES, fit_correlations, fit_linear, ranking_agreement
from analysis.overfit import PATIENCE, REL_TOL, WINDOW, fit_overfitting
from analysis.scaling_fit import fit_scaling
from analysis.table import Results, load_results
from subsets.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REPORT_NAME, FITS_NAME = "report.html", "fits.json"
# Figure number in the report -> PNG name prefix, so files sort in report order.
PNG_NAME = "fig{n}_{name}.png"


def analyze(
    results: Results,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Every fit of the analysis, as the dict written to ``fits.json``."""
    cells = results.cells
    return {
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
        },
        "settings": {
            "seed": seed,
            "n_resamples": n_resamples,
            "confidence": confidence,
            "overfit_rel_tol": REL_TOL,
            "overfit_patience": PATIENCE,
            "overfit_window": WINDOW,
        },
        "notes": list(results.notes),
        "correlation": fit_correlations(
            cells, seed=seed, n_resamples=n_resamples, confidence=confidence
        ),
        "linear_fit": fit_linear(cells),
        "ranking": ranking_agreement(cells),
        "overfitting": fit_overfitting(cells, results.curves),
        "scaling": fit_scaling(cells, confidence=confidence),
    }


def write_report(
    source: str | Path | pd.DataFrame,
    out_dir: str | Path,
    png: bool = False,
    *,
    curves: str | Path | pd.DataFrame | None = None,
    seed: int = 0,
) -> Path | str:
    """Analyse SOURCE and write ``fits.json``, ``report.html`` (and PNGs) into OUT_DIR.

    SOURCE is a study results directory, a CSV/Parquet table of cells or a DataFrame
    (columns: see :mod:`analysis.table`); ``curves`` an optional curves table for an
    external SOURCE. OUT_DIR is a local directory or a URI pyarrow can write to (like a
    study's ``output_dir``). Returns the path of ``report.html`` (its URI for a remote
    OUT_DIR). Raises ``AnalysisError`` on bad input or, with ``png``, when no browser can
    render the figures.
    """
    results = load_results(source, curves=curves)
    fits = analyze(results, seed=seed)
    figs = figures.build_figures(results, fits)
    page = html.render_report(results, fits, figs)
    text = json.dumps(to_jsonable(fits), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    pngs = export.render_pngs(figs) if png else {}
    files = {PNG_NAME.format(n=n, name=k): v for n, (k, v) in enumerate(pngs.items(), start=1)}
    files[FITS_NAME] = text.encode()
    files[REPORT_NAME] = page.encode()  # last: once it is there, so is the rest
    report = _write_all(out_dir, files)
    log.info("wrote %s and %d other files", report, len(files) - 1)
    return report


def _write_all(out_dir: str | Path, files: dict[str, bytes]) -> Path | str:
    """Write each file atomically (temp name, then rename); return the report's path."""
    text = str(out_dir)
    try:
        if "://" in text and not text.startswith("file://"):
            fs, base = filesystem(text)
            _write_remote(fs, base.rstrip("/"), files)
            return f"{text.rstrip('/')}/{REPORT_NAME}"
        out = Path(filesystem(text)[1]) if "://" in text else Path(out_dir)
        for name, data in files.items():
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(data)
                tmp.chmod(0o644)  # reports are shared; temp files start as 0600
        return out / REPORT_NAME
    except OSError as err:
        raise AnalysisError(f"{text}: cannot write the report: {err}") from err


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
