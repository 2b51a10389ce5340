"""Cells fine-tuned on several downstream targets: the report's fits use the primary target
and each target gets its own val-loss ↔ top-1 correlation (not one pooled scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from analysis_fixtures import synthetic_cells

from analysis.report import write_report


def test_each_target_is_correlated_on_its_own(tmp_path: Path) -> None:
    base = synthetic_cells()
    base["target"] = "in1k"
    other = base.copy()
    other["target"] = "inat18"
    other["cell_id"] = other["cell_id"] + "/inat18"
    # another data set: lower accuracies, and ordered the other way round by val loss
    other["finetune_top1"] = 30.0 + (other["val_loss"] - other["val_loss"].min()) * 10
    other["finetune_top5"] = other["finetune_top1"] + 20
    cells = pd.concat([base, other, base.iloc[:1].assign(target="in1k", cell_id="x/extra")])
    out = tmp_path / "report"
    write_report(cells, out)
    fits = json.loads((out / "fits.json").read_text())
    targets = fits["targets"]
    assert targets["primary"] == "in1k"  # more cells
    by = targets["by_target"]
    assert by["in1k"]["overall"]["pearson"]["r"] < -0.5
    assert by["inat18"]["overall"]["pearson"]["r"] > 0.99  # its own sign, not pooled away
    # the main fits see the primary target's cells only: the repeated first row agrees with
    # its cell and is merged, so they equal those of the single-target study
    single = tmp_path / "single"
    write_report(base, single)
    alone = json.loads((single / "fits.json").read_text())
    assert fits["correlation"] == alone["correlation"]
