"""Synthetic study results with known answers, for the analysis tests.

Grid: 3 models × 5 data sets × 3 lengths = 45 complete cells plus 2 failed ones.

- val loss = E_model + 0.02 · 1000 / T + A · (D / 1e6)^-ALPHA, exactly, except that the
  pairs in OVERFIT_PAIRS gain 0.03 per 1000 iterations beyond 2000: their val loss rises
  with length, the best length is 2000, and the curve of the 4000-iteration cell turns
  at step 2000 while its training loss keeps falling.
- top-1 = 100 - 60 · val loss + N(0, 0.3²) with a fixed seed: a strong negative correlation.
- The curve of SPIKE_CELL has one outlying val point mid-way and one near the end:
  a robust turn detector must not flag it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODELS = {"tiny": 5.7, "small": 22.0, "base": 87.0}
E_MODEL = {"tiny": 0.42, "small": 0.40, "base": 0.38}
DATA = {
    "in1k-10pct": 128_117,
    "in1k-20pct": 256_234,
    "in1k-50pct": 640_584,
    "in1k-100pct": 1_281_167,
    "in22k": 14_197_087,
}
LENGTHS = (1000, 2000, 4000)
A, ALPHA = 0.05, 0.3
OVERFIT_PAIRS = {("base", "in1k-10pct"), ("base", "in1k-20pct")}
LOG_EVERY = 200
SPIKE_CELL = "tiny/in1k-100pct/4000"
TOP1_NOISE = 0.3


def val_loss(model: str, data: str, iterations: int) -> float:
    loss = E_MODEL[model] + 0.02 * 1000 / iterations + A * (DATA[data] / 1e6) ** -ALPHA
    if (model, data) in OVERFIT_PAIRS:
        loss += 0.03 * max(0.0, (iterations - 2000) / 1000)
    return loss


def synthetic_cells(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, params in MODELS.items():
        for data, n in DATA.items():
            for it in LENGTHS:
                v = val_loss(model, data, it)
                rows.append(
                    {
                        "cell_id": f"{model}/{data}/{it}",
                        "model": model,
                        "params_m": params,
                        "data": data,
                        "n_train_images": n,
                        "iterations": it,
                        "batch_size": 256,
                        "epochs_seen": it * 256 / n,
                        "status": "complete",
                        "train_loss": v - 0.05 - 0.01 * it / 1000,
                        "val_loss": v,
                        "finetune_top1": 100 - 60 * v + rng.normal(0, TOP1_NOISE),
                        "finetune_top5": 99.0,
                        "pretrain_flops": 1e15 * params * it,
                        "gpu_hours": it / 1000,
                        "wall_s": it * 3.6,
                    }
                )
    for i, status in enumerate(("failed", "running")):
        rows.append(
            {
                **rows[i],
                "cell_id": f"extra-{status}",
                "status": status,
                "val_loss": np.nan,
                "finetune_top1": np.nan,
            }
        )
    return pd.DataFrame(rows)


def synthetic_curves(cells: pd.DataFrame) -> pd.DataFrame:
    points: list[dict[str, Any]] = []
    for cell in cells[cells["status"] == "complete"].itertuples():
        steps = np.arange(LOG_EVERY, cell.iterations + 1, LOG_EVERY)
        overfits = (cell.model, cell.data) in OVERFIT_PAIRS and cell.iterations > 2000
        if overfits:
            low = val_loss(cell.model, cell.data, 2000)
            descent = low + 0.3 * (np.exp(-5 * steps / 2000) - np.exp(-5))
            val = np.where(steps <= 2000, descent, low + 0.03 * (steps - 2000) / 1000)
        else:
            t = steps / cell.iterations
            val = cell.val_loss + 0.3 * (np.exp(-5 * t) - np.exp(-5))
        if cell.cell_id == SPIKE_CELL:
            val = val.copy()
            val[len(val) // 2] += 0.05
            val[-2] += 0.05
        train = cell.train_loss + 0.4 * (np.exp(-4 * steps / cell.iterations) - np.exp(-4))
        for split, values in (("train", train), ("val", val)):
            points += [
                {
                    "cell_id": cell.cell_id,
                    "phase": "pretrain",
                    "step": int(s),
                    "split": split,
                    "metric": "loss",
                    "value": float(v),
                    "lr": 1e-4,
                }
                for s, v in zip(steps, values, strict=True)
            ]
        points.append(
            {
                "cell_id": cell.cell_id,
                "phase": "finetune",
                "step": 100,
                "split": "val",
                "metric": "top1",
                "value": cell.finetune_top1,
                "lr": 1e-3,
            }
        )
    return pd.DataFrame(points)


def write_study(root: Path, seed: int = 0) -> Path:
    """A study results directory: cells.parquet, curves.parquet, study.json."""
    root.mkdir(parents=True, exist_ok=True)
    cells = synthetic_cells(seed)
    cells.to_parquet(root / "cells.parquet", index=False)
    synthetic_curves(cells).to_parquet(root / "curves.parquet", index=False)
    (root / "study.json").write_text(json.dumps({"name": "synthetic", "hash": "abc123"}))
    return root


def external_table(path: Path) -> Path:
    """The complete cells as a published-results CSV: only the required columns."""
    cells = synthetic_cells()
    cells = cells[cells["status"] == "complete"]
    cols = [
        "model",
        "params_m",
        "data",
        "n_train_images",
        "iterations",
        "val_loss",
        "finetune_top1",
    ]
    cells[cols].to_csv(path, index=False)
    return path


def paper_table(path: Path, replace: tuple[str, str] | None = None) -> Path:
    """The shipped published table, optionally with its first ``old`` text made ``new``:
    a real 63-cell table with one defect at a known line."""
    from analysis.reference import reference_path

    text = Path(reference_path("paper")).read_text()
    if replace is not None:
        assert replace[0] in text, replace
        text = text.replace(replace[0], replace[1], 1)
    path.write_text(text)
    return path


def paper_line(text: str) -> int:
    """The line number (from 1) of the first line of the shipped table containing ``text``."""
    from analysis.reference import reference_path

    lines = Path(reference_path("paper")).read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if text in line)
