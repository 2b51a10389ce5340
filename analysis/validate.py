"""Validate a cells table: columns, types, ranges, keys; every error says where.

The checks run before any analysis: a bad value (a top-1 of 183.1, a negative or infinite
loss), two rows for one cell that disagree, or two sizes for one data set stop the run
with exit 2 and the line (CSV) or row index (Parquet, DataFrame) of each culprit.
Rows that repeat a cell exactly are merged with a note; replicates (a ``seed`` column
with several seeds per cell) are aggregated by :mod:`analysis.replicates`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.replicates import aggregate_replicates, merge_duplicates
from analysis.table import WHERE, group_key

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
    "seed": NUMBER,
    "mask_ratio": NUMBER,
    "method": TEXT,
    "target": TEXT,
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
MEASURED_KEYS = ("params_m", "n_train_images")
"""Keys a study learns by running a cell (empty in the rows of cells that failed)."""
# column -> (low, high, low included); NaN is a missing measurement, ±inf always an error
RANGES: dict[str, tuple[float, float, bool]] = {
    "params_m": (0.0, math.inf, False),
    "n_train_images": (0.0, math.inf, False),
    "iterations": (0.0, math.inf, False),
    "batch_size": (0.0, math.inf, False),
    "val_loss": (0.0, math.inf, True),
    "train_loss": (0.0, math.inf, True),
    "finetune_top1": (0.0, 100.0, True),
    "finetune_top5": (0.0, 100.0, True),
    "epochs_seen": (0.0, math.inf, True),
    "pretrain_flops": (0.0, math.inf, True),
    "gpu_hours": (0.0, math.inf, True),
    "wall_s": (0.0, math.inf, True),
    "seed": (-math.inf, math.inf, True),
    "mask_ratio": (0.0, 1.0, False),
}
# one value per name: a data set has one size, a model one parameter count
ONE_VALUE_PER = {"data": "n_train_images", "model": "params_m"}


@dataclass
class Prepared:
    """A validated cells table and what was done to it."""

    cells: pd.DataFrame
    dropped: pd.DataFrame | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    id_map: dict[str, str] = field(default_factory=dict)
    """Every complete row's cell_id -> the id of its (possibly aggregated) cell."""
    n_seeds: int = 1


def places(df: pd.DataFrame, index: pd.Index | list) -> str:
    """'lines 5, 9' / 'row 3': where the given rows came from, at most five named."""
    labels = [str(v) for v in df.loc[list(index), WHERE]] if WHERE in df else []
    if not labels:
        return "rows " + ", ".join(str(i) for i in list(index)[:5])
    kind = labels[0].split(" ")[0]
    nums = [label.split(" ", 1)[-1] for label in labels]
    shown = ", ".join(nums[:5]) + (f" and {len(nums) - 5} more" if len(nums) > 5 else "")
    return f"{kind}{'s' if len(nums) > 1 else ''} {shown}"


def check_columns(
    df: pd.DataFrame, name: str, required: dict[str, str], optional: dict[str, str]
) -> pd.DataFrame:
    """Check presence and types of columns; return a copy with text columns as str."""
    if df.empty:
        raise AnalysisError(f"{name}: the table is empty (no rows)")
    missing = [c for c in required if c not in df]
    if missing:
        raise AnalysisError(f"{name}: " + _missing_message(df, missing, required))
    problems = []
    df = df.copy()
    for col, kind in {**required, **optional}.items():
        if col not in df:
            continue
        if kind == NUMBER:
            problem = _number_problem(df, col)
            if problem:
                problems.append(f"column {col!r} must be a number, {problem}")
            else:
                df[col] = pd.to_numeric(df[col]).astype(float)
        else:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    if problems:
        raise AnalysisError(f"{name}: " + "; ".join(problems))
    return df


def _missing_message(df: pd.DataFrame, missing: list[str], required: dict[str, str]) -> str:
    text = "; ".join(f"missing column {c!r} ({required[c]})" for c in missing)
    found = [str(c) for c in df.columns if c != WHERE]
    if len(found) == 1 and any(sep in found[0] for sep in ";\t|"):
        sep = next(s for s in ";\t|" if s in found[0])
        return (
            f"{text}. The header is one column {found[0][:60]!r}: the file looks "
            f"{ {';': 'semicolon', chr(9): 'tab', '|': 'pipe'}[sep] }-separated; "
            "save it comma-separated (one row per cell)"
        )
    if len(missing) >= 3:
        text += (
            f". Found columns {found[:8]}: the table must be long format, one row per "
            f"cell with the columns {', '.join(required)} (a wide table with a column per "
            "length or data set can be reshaped with pandas.melt)"
        )
    return text


def _number_problem(df: pd.DataFrame, col: str) -> str | None:
    """Why a column is not numeric, or None. Text that spells a number is accepted:
    a CSV column with one stray word is read as text throughout, and the word is the error."""
    values = df[col]
    if pd.api.types.is_bool_dtype(values):
        return f"got true/false ({places(df, df.index[:1])})"
    if pd.api.types.is_numeric_dtype(values):
        return None
    present = values.dropna()
    is_bool = present.map(lambda v: isinstance(v, bool | np.bool_))
    bad = present[pd.to_numeric(present, errors="coerce").isna() | is_bool]
    if bad.empty:
        return None
    value = bad.iloc[0]
    return f"got {type(value).__name__} {value!r} ({places(df, bad.index[:1])})"


def check_values(df: pd.DataFrame, name: str) -> None:
    """Empty keys, values out of range and non-finite numbers, all listed at once."""
    problems = []
    # a cell that did not finish never measured its size or its data's (a failed stage's
    # row in a study's cells.parquet): those keys are required of complete cells only
    finished = df["status"].isna() | (df["status"] == "complete") if "status" in df else True
    for col in KEY_COLUMNS:
        missing = df[col].isna() & (finished if col in MEASURED_KEYS else True)
        bad = df.index[missing]
        if len(bad):
            problems.append(f"{places(df, bad)}: column {col!r} is empty")
    for col, (low, high, closed) in RANGES.items():
        if col not in df:
            continue
        v = df[col]
        above = v < low if closed else v <= low
        bad = df.index[np.isinf(v) | above | (v > high)]
        if len(bad):
            span = f"{'[' if closed else '('}{group_key(low)}, {group_key(high)}]"
            span = span.replace("inf]", "inf)")
            got = ", ".join(f"{x:g}" for x in v[bad][:3])
            problems.append(f"{places(df, bad)}: column {col!r} must be in {span}, got {got}")
    if problems:
        raise AnalysisError(f"{name}: " + "; ".join(problems))


def check_one_value_per_name(df: pd.DataFrame, name: str) -> None:
    """Every data name has one size and every model one parameter count."""
    problems = []
    for key, col in ONE_VALUE_PER.items():
        for value, group in df.groupby(key, sort=False):
            counts = group[col].value_counts()
            if len(counts) > 1:
                odd = group.index[group[col] != counts.index[0]]
                problems.append(
                    f"{places(df, odd)}: {key} {value!r} has {col} "
                    f"{', '.join(f'{group_key(x)}' for x in counts.index)} in different rows "
                    f"({group_key(counts.index[0])} in most); one {key} has one {col}"
                )
    if problems:
        raise AnalysisError(f"{name}: " + "; ".join(problems))


def prepare_cells(df: pd.DataFrame, name: str) -> Prepared:
    """Validate, keep complete cells, merge exact repeats, aggregate replicates, sort."""
    df = check_columns(df, name, CELL_COLUMNS, OPTIONAL_CELL_COLUMNS)
    df, notes = _top1_percent(df)
    check_values(df, name)
    if "cell_id" not in df:
        length = df["iterations"].map(lambda v: str(group_key(v)))
        df["cell_id"] = df["model"] + "/" + df["data"] + "/" + length
        if "method" in df:  # cells of several MIM methods (see analysis.proxies)
            df["cell_id"] = df["cell_id"] + "/" + df["method"].fillna("simmim").astype(str)
        if "seed" in df:
            seed = df["seed"].map(lambda v: "" if pd.isna(v) else f"/seed{group_key(v)}")
            df["cell_id"] = df["cell_id"] + seed
    else:
        dup = df.index[df["cell_id"].notna() & df["cell_id"].duplicated(keep=False)]
        if len(dup):
            ids = sorted(set(df.loc[dup, "cell_id"]))[:3]
            raise AnalysisError(f"{name}: {places(df, dup)}: duplicate cell_id {ids}")
    out = _keep_complete(df, name)
    out.notes[:0] = notes
    check_one_value_per_name(out.cells, name)
    cells, merged = merge_duplicates(out.cells, name)
    out.notes += merged
    cells, out.id_map, out.n_seeds, agg_notes = aggregate_replicates(cells)
    out.notes += agg_notes
    if cells["val_loss"].isna().all():
        raise AnalysisError(
            f"{name}: no complete cell has a val_loss (all {len(cells)} are empty); "
            "nothing to analyse"
        )
    for col in ("val_loss", "finetune_top1"):
        n = int(cells[col].isna().sum())
        if n:
            out.notes.append(f"{n} complete cells have no {col}; fits that need it skip them")
    order = ["params_m", "model", "n_train_images", "data", "iterations", "cell_id"]
    out.cells = cells.sort_values(order, kind="stable").reset_index(drop=True)
    return out


def _keep_complete(df: pd.DataFrame, name: str) -> Prepared:
    out = Prepared(df)
    if "status" in df:
        status = df["status"].fillna("(none)").str.strip().str.lower()
        excluded = {str(k): int(v) for k, v in status[status != "complete"].value_counts().items()}
        dropped = df[status != "complete"].reset_index(drop=True)
        out.cells = df[status == "complete"]
        out.excluded = excluded
        out.dropped = dropped if len(dropped) else None
        if excluded:
            what = ", ".join(f"{n} {s}" for s, n in sorted(excluded.items()))
            n = sum(excluded.values())
            out.notes.append(f"{n} cells excluded from the fits (status: {what})")
            log.info("%s: %s", name, out.notes[-1])
    if out.cells.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(out.excluded.items()))
        raise AnalysisError(f"{name}: no complete cells to analyse (status: {statuses})")
    return out


def _top1_percent(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """An accuracy column all in [0, 1] holds fractions: a fine-tuned top-1 below 1% is not
    plausible. Each column is judged on its own."""
    converted = []
    for col in ("finetune_top1", "finetune_top5"):
        values = df[col].dropna() if col in df else pd.Series(dtype=float)
        if not values.empty and values.min() >= 0.0 and values.max() <= 1.0:
            df[col] = df[col] * 100.0
            converted.append(col)
    if not converted:
        return df, []
    return df, [f"{', '.join(converted)}: fractions in [0, 1]; converted to percent"]


def validate_curves(df: pd.DataFrame, name: str, id_map: dict[str, str]) -> pd.DataFrame | None:
    """Check the curves columns; keep the pre-training loss points of the given cells,
    under the id of their (aggregated) cell so replicates' curves average."""
    df = check_columns(df, name, CURVE_COLUMNS, OPTIONAL_CURVE_COLUMNS)
    keep = (df["phase"] == "pretrain") & (df["metric"] == "loss") & df["cell_id"].isin(id_map)
    df = df[keep & df["value"].notna() & df["step"].notna()].copy()
    bad = df.index[~np.isfinite(df["value"])]
    if len(bad):
        raise AnalysisError(f"{name}: {places(df, bad)}: column 'value' is not finite")
    if df.empty:
        log.info("%s: no pre-training loss points for the complete cells", name)
        return None
    df["cell_id"] = df["cell_id"].map(id_map)
    return df.sort_values(["cell_id", "split", "step"]).reset_index(drop=True)
