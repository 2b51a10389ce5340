"""Run every fit, build the figures and write ``fits.json``, ``report.html`` (and PNGs).

``write_report`` is the entry point for both ``mimscale analyze`` and the study runner
(which calls it after ``mimscale run``). Everything is computed and rendered in memory
first, then each file is written atomically, so an error leaves no half-written report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import export, figures, html
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
) -> Path:
    """Analyse SOURCE and write ``fits.json``, ``report.html`` (and PNGs) into OUT_DIR.

    SOURCE is a study results directory, a CSV/Parquet table of cells or a DataFrame
    (columns: see :mod:`analysis.table`); ``curves`` an optional curves table for an
    external SOURCE. Returns the path of ``report.html``. Raises ``AnalysisError`` on bad
    input or, with ``png``, when no browser can render the figures.
    """
    results = load_results(source, curves=curves)
    fits = analyze(results, seed=seed)
    figs = figures.build_figures(results, fits)
    page = html.render_report(results, fits, figs)
    text = json.dumps(to_jsonable(fits), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    pngs = export.render_pngs(figs) if png else {}
    out = Path(out_dir)
    for n, (name, data) in enumerate(pngs.items(), start=1):
        _write(out / PNG_NAME.format(n=n, name=name), data)
    _write(out / FITS_NAME, text.encode())
    report = out / REPORT_NAME
    _write(report, page.encode())
    log.info("wrote %s, %s%s", report, FITS_NAME, f" and {len(pngs)} PNGs" if pngs else "")
    return report


def _write(target: Path, data: bytes) -> None:
    """Atomic write, readable by all: reports are shared, and temp files start as 0600."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)


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
