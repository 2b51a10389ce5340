"""Published results shipped as reference data sets, and the comparison with a study.

``REFERENCES`` names each set; its CSV lives in ``analysis/data/`` with its source in the
file's header. ``mimscale analyze --reference paper`` analyses the published table itself;
``mimscale analyze SOURCE --reference paper`` overlays the published cells on the figures
and compares the cells that match on (model, data, iterations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.table import Results, group_key, load_results

KEY = ["model", "data", "iterations"]


@dataclass(frozen=True)
class Reference:
    """One published table of cells."""

    file: str
    """CSV under analysis/data/ (header lines starting with '#' name the source)."""
    title: str
    """How the report names it."""
    source: str
    """Where the numbers were published."""


REFERENCES: dict[str, Reference] = {
    "paper": Reference(
        file="paper_xie2023.csv",
        title="Xie et al., On Data Scaling in Masked Image Modeling (CVPR 2023): released runs",
        source="github.com/microsoft/Swin-Transformer MODELHUB.md, "
        "'SimMIM Pretrained Swin-V2 Models' (63 cells)",
    ),
}


def reference(name: str) -> Reference:
    """The reference set called ``name``; unknown names list the known ones."""
    if name not in REFERENCES:
        raise AnalysisError(
            f"--reference: unknown reference {name!r}; known: {', '.join(sorted(REFERENCES))}"
        )
    return REFERENCES[name]


def reference_path(name: str) -> str:
    """The file of reference ``name`` inside the installed package."""
    # beside this module, not importlib.resources: a tests/analysis folder on sys.path
    # can shadow the package's namespace, never a module's own __file__
    return str(Path(__file__).with_name("data") / reference(name).file)


def load_reference(name: str) -> Results:
    """The published cells of reference ``name``, validated like any table."""
    return load_results(reference_path(name))


def compare(cells: pd.DataFrame, published: pd.DataFrame, name: str) -> dict[str, Any]:
    """Per-cell differences (study − published) where (model, data, iterations) match."""
    ref = reference(name)
    cols = [*KEY, "val_loss", "finetune_top1"]
    ours = cells[[*cols, "cell_id"]]
    merged = ours.merge(published[cols], on=KEY, suffixes=("", "_published"))
    matched = []
    for _, row in merged.iterrows():
        matched.append(
            {
                "cell_id": row["cell_id"],
                **{k: group_key(row[k]) for k in KEY},
                **{
                    f"{m}{suffix}": _num(row[f"{m}{suffix}"])
                    for m in ("val_loss", "finetune_top1")
                    for suffix in ("", "_published")
                },
                "val_loss_diff": _num(row["val_loss"] - row["val_loss_published"]),
                "finetune_top1_diff": _num(row["finetune_top1"] - row["finetune_top1_published"]),
            }
        )

    def mean_abs(key: str) -> float | None:
        values = [abs(m[key]) for m in matched if m[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "name": name,
        "title": ref.title,
        "source": ref.source,
        "n_published": len(published),
        "n_matched": len(matched),
        "mean_abs_val_loss_diff": mean_abs("val_loss_diff"),
        "mean_abs_top1_diff": mean_abs("finetune_top1_diff"),
        "matched": matched,
    }


def _num(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
