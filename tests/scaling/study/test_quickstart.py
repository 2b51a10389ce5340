"""The quickstart shows the paper's two findings on the embedded data (issue 11): a clearly
negative val-loss ↔ top-1 correlation, and a (model, data) pair whose val loss turns up
with longer training while its training loss keeps falling. A real run, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import REPO, mimscale

pytestmark = pytest.mark.slow


def test_the_quickstart_report_shows_the_findings(tmp_path: Path, demo_dir: Path) -> None:
    out = tmp_path / "quickstart"
    sets = [f"output_dir={out}", f"data.root={demo_dir}", f"data.manifest_dir={demo_dir}/manifests"]
    args = [a for s in sets for a in ("--set", s)]
    run = mimscale("run", str(REPO / "studies" / "quickstart.toml"), *args, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "save not implemented" not in run.stderr  # Tune's searcher warning: no state
    fits = json.loads((out / "report" / "fits.json").read_text())
    assert fits["cells"]["complete"] == 7
    assert fits["correlation"]["overall"]["pearson"]["r"] < -0.8
    overfitting = [p for p in fits["overfitting"]["by_model_data"] if p["overfits"]]
    assert [(p["model"], p["data"]) for p in overfitting] == [("swinv2-nano", "demo-1pct")]
