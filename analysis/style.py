"""Shared look of the figures and the report: colours, number formats, layout."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.colors

TEMPLATE = "plotly_white"
FIG_HEIGHT = 460
PNG_WIDTH = 1200
FONT = "Helvetica, Arial, sans-serif"
OVERFIT_COLOR = "#000000"  # no model colour: the qualitative palette has no black


def ordered(cells: pd.DataFrame, name: str, by: str) -> list[Any]:
    """Distinct values of column ``name`` ordered by column ``by`` (e.g. models by size)."""
    return cells.groupby(name, sort=False)[by].median().sort_values(kind="stable").index.tolist()


def qualitative(names: Sequence[Any]) -> dict[Any, str]:
    """One distinct colour per name (models)."""
    palette = plotly.colors.qualitative.Plotly
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def sequential(names: Sequence[Any], scale: str = "Viridis") -> dict[Any, str]:
    """Colours along a sequential scale, in the given order (data sizes, lengths).

    The light end of the scale is left out: yellow lines vanish on white.
    """
    if len(names) == 1:
        return {names[0]: plotly.colors.sample_colorscale(scale, [0.0])[0]}
    points = [0.85 * i / (len(names) - 1) for i in range(len(names))]
    return dict(zip(names, plotly.colors.sample_colorscale(scale, points), strict=True))


def fmt_count(value: float) -> str:
    """800000 → '800k', 1281167 → '1.28M': short labels for lengths and data sizes."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:g}"


def fmt_ci(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """'−0.93 [−0.97, −0.86]' from a correlation entry, '—' when undefined."""
    if not entry or entry.get("r") is None:
        return "—"
    r = f"{entry['r']:.{digits}f}"
    if entry.get("ci_low") is None:
        return r
    return f"{r} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def fmt_num(value: Any, digits: int = 4) -> str:
    """A table cell: numbers with ``digits`` significant digits, blanks for missing."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if float(value).is_integer() and abs(value) < 1e12:
            return f"{int(value):,}"  # counts: images, iterations, seconds
        return f"{value:.{digits}g}"
    return str(value)


# one format per quantity, so it reads the same in every table
COLUMN_FORMATS: dict[str, str] = {
    "val_loss": ".4f",
    "val_loss_sd": ".4f",
    "train_loss": ".4f",
    "train_loss_sd": ".4f",
    "finetune_top1": ".2f",
    "finetune_top1_sd": ".2f",
    "finetune_top5": ".2f",
    "finetune_top5_sd": ".2f",
    "params_m": ".1f",
    "epochs_seen": ".2f",
    "gpu_hours": ".3g",
    "pretrain_flops": ".3g",
    "wall_s": ".1f",
}


def fmt_value(value: Any, spec: str | None = None) -> str:
    """A table cell: ``spec`` for numbers when given, else :func:`fmt_num`."""
    if spec is None or value is None or isinstance(value, str | bool):
        return fmt_num(value)
    if isinstance(value, numbers.Real) and math.isnan(value):
        return ""
    return format(value, spec)


def layout(title: str, subtitle: str | None = None, height: int = FIG_HEIGHT) -> dict[str, Any]:
    """Common layout: white template, title (with a smaller subtitle line), fixed height."""
    text = title if not subtitle else f"{title}<br><sup>{subtitle}</sup>"
    return {
        "template": TEMPLATE,
        "title": {"text": text, "x": 0.01, "xanchor": "left"},
        "height": height,
        "font": {"family": FONT, "size": 13},
        "margin": {"l": 70, "r": 30, "t": 90, "b": 60},
        "legend": {"font": {"size": 11}},
    }


def note_if_empty(fig: Any, empty: bool, text: str) -> Any:
    """Say why a figure has nothing to show rather than draw bare axes."""
    if empty:
        fig.add_annotation(
            text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
            font={"size": 15, "color": "#777"},
        )  # fmt: skip
    return fig
