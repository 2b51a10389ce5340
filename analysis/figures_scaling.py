"""Scaling figures: top-1 and val loss versus data size and versus model size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style
from analysis.scaling_fit import power_law, power_law_band


def scaling_vs_data(
    cells: pd.DataFrame, fits: dict[str, Any], published: pd.DataFrame | None = None
) -> go.Figure:
    """Top-1 (top row) and val loss (bottom row) vs data size; a column per model, a line
    per length over the main data family, the power-law fit dotted where there is one,
    data of another distribution (IN-22K) as stars off the lines, published cells grey."""
    models = style.ordered(cells, "model", "params_m")
    lengths = sorted(cells["iterations"].unique())
    colors = style.sequential(lengths, "Plasma")
    fig = make_subplots(
        rows=2,
        cols=len(models),
        subplot_titles=[str(m) for m in models],
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    shown: set[Any] = set()
    for entry in fits["scaling"]["vs_data"]:
        col = models.index(entry["model"]) + 1
        it = entry["iterations"]
        name = f"{style.fmt_count(it)} it"
        for row, key, fit_key in ROWS:
            _series(fig, entry, row, col, key, name, colors[it], it not in shown)
            shown.add(it)
            _fit_curve(fig, entry, row, col, entry[fit_key], colors[it], name)
            _other_points(fig, entry, row, col, key, colors[it], name)
    if published is not None:
        _published(fig, published, models)
    sizes = sorted(cells["n_train_images"].unique())
    fig.update_xaxes(
        type="log",
        matches="x",  # one range for every column (an explicit log range blanks the plot)
        tickvals=sizes,
        ticktext=[style.fmt_count(v) for v in sizes],
        tickangle=-45,
    )
    fig.update_xaxes(title_text="train images", row=2)
    fig.update_yaxes(title_text="fine-tuned top-1 (%)", row=1, col=1)
    fig.update_yaxes(title_text="validation loss", row=2, col=1)
    apart = fits["scaling"]["data_family"]["apart"]
    subtitle = "a column per model, a line per training length; dotted: E + A·D^-α fit"
    if apart:
        subtitle += f"; ★ {', '.join(apart)}: another distribution, not on the lines or fits"
    fig.update_layout(**style.layout("Scaling with data size", subtitle, height=640))
    return fig


PUBLISHED_MARKER = {"symbol": "x-thin-open", "size": 8, "color": "#999", "line": {"width": 1.5}}
ROWS = ((1, "finetune_top1", "top1_error_fit"), (2, "val_loss", "val_loss_fit"))


def _series(
    fig: go.Figure,
    entry: dict[str, Any],
    row: int,
    col: int,
    key: str,
    name: str,
    color: str,
    show: bool,
) -> None:
    y = [np.nan if v is None else v for v in entry[key]]
    fig.add_trace(
        go.Scatter(
            x=entry["n_train_images"],
            y=y,
            mode="lines+markers",
            name=name,
            legendgroup=name,
            showlegend=show,
            line={"color": color},
            hovertemplate=f"{name}<br>%{{x:,}} images: %{{y:.4g}}<extra>{entry['model']}</extra>",
        ),
        row=row,
        col=col,
    )


def _fit_curve(
    fig: go.Figure,
    entry: dict[str, Any],
    row: int,
    col: int,
    fit: dict[str, Any],
    color: str,
    name: str,
) -> None:
    if "skipped" in fit:
        return
    d = np.asarray(entry["n_train_images"], dtype=float)
    xs = np.geomspace(d.min(), d.max(), 40)
    ys = power_law(xs, fit["E"], fit["A"], fit["alpha"])
    half = power_law_band(fit, xs)
    if half is not None:  # only fits with an interval have a band
        lo, hi = ys - half, ys + half
        band_y = np.concatenate([hi, lo[::-1]])
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([xs, xs[::-1]]),
                y=100.0 - band_y if row == 1 else band_y,
                fill="toself",
                fillcolor=_rgba(color, 0.15),
                line={"width": 0},
                legendgroup=name,
                showlegend=False,
                hoverinfo="skip",
            ),
            row=row,
            col=col,
        )
    bound = f" ({', '.join(fit['at_bound'])} at bound)" if fit["at_bound"] else ""
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=100.0 - ys if row == 1 else ys,
            mode="lines",
            line={"color": color, "dash": "dot", "width": 1},
            legendgroup=name,
            showlegend=False,
            hovertemplate=f"fit: E={fit['E']:.4g}, α={fit['alpha']:.3g}{bound}<extra></extra>",
        ),
        row=row,
        col=col,
    )


def _rgba(color: str, alpha: float) -> str:
    """'#rrggbb' or 'rgb(r, g, b)' with an alpha."""
    import plotly.colors

    rgb = (
        plotly.colors.hex_to_rgb(color)
        if color.startswith("#")
        else plotly.colors.unlabel_rgb(color)
    )
    return f"rgba({int(rgb[0])}, {int(rgb[1])}, {int(rgb[2])}, {alpha})"


def _other_points(
    fig: go.Figure, entry: dict[str, Any], row: int, col: int, key: str, color: str, name: str
) -> None:
    other = [o for o in entry["other_data"] if o[key] is not None]
    if not other:
        return
    fig.add_trace(
        go.Scatter(
            x=[o["n_train_images"] for o in other],
            y=[o[key] for o in other],
            mode="markers",
            marker={"symbol": "star", "size": 12, "color": color, "line": {"width": 0.5}},
            legendgroup=name,
            showlegend=False,
            text=[o["data"] for o in other],
            hovertemplate="%{text} (another distribution)<br>%{x:,} images: %{y:.4g}"
            f"<extra>{entry['model']} {name}</extra>",
        ),
        row=row,
        col=col,
    )


def _published(fig: go.Figure, published: pd.DataFrame, models: list[str]) -> None:
    """Published cells of the study's models, grey, in the matching column."""
    first = True
    for model in models:
        part = published[published["model"] == model]
        for row, key, _ in ROWS:
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["n_train_images"],
                    y=part[key],
                    mode="markers",
                    name="published (reference)",
                    showlegend=first,
                    legendgroup="published",
                    marker=PUBLISHED_MARKER,
                    customdata=part[["data", "iterations"]].to_numpy(),
                    hovertemplate="published %{customdata[0]}, %{customdata[1]:,} it: "
                    f"%{{y:.4g}}<extra>{model}</extra>",
                ),
                row=row,
                col=models.index(model) + 1,
            )
            first = False


def scaling_vs_model_size(cells: pd.DataFrame, fits: dict[str, Any]) -> go.Figure:
    """Best top-1 over lengths (left) and lowest val loss (right) vs parameters, per data;
    data of another distribution (IN-22K) dashed with star markers."""
    entries = fits["scaling"]["vs_model_size"]
    order = style.ordered(cells, "data", "n_train_images")
    colors = style.sequential(order)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["best top-1 over lengths", "lowest validation loss"],
    )
    for entry in sorted(entries, key=lambda e: order.index(e["data"])):
        data = entry["data"]
        apart = entry.get("other_distribution", False)
        name = f"{data} ({style.fmt_count(entry['n_train_images'])} images)"
        name += ", another distribution" if apart else ""
        custom = np.column_stack([entry["model"], entry["best_iterations"]])
        for col, key in ((1, "best_top1"), (2, "min_val_loss")):
            y = [np.nan if v is None else v for v in entry[key]]
            fig.add_trace(
                go.Scatter(
                    x=entry["params_m"],
                    y=y,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": colors[data], "dash": "dash" if apart else "solid"},
                    marker={"symbol": "star" if apart else "circle", "size": 11 if apart else 7},
                    customdata=custom,
                    hovertemplate="%{customdata[0]} (%{x:.4g}M params)<br>%{y:.4g}"
                    f"<extra>{data}</extra>",
                ),
                row=1,
                col=col,
            )
    params = sorted(cells["params_m"].unique())
    fig.update_xaxes(
        type="log",
        tickvals=params,
        ticktext=[f"{p:g}" for p in params],
        title_text="encoder parameters (millions)",
    )
    fig.update_yaxes(title_text="fine-tuned top-1 (%)", col=1)
    fig.update_yaxes(title_text="validation loss", col=2)
    subtitle = f"a line per train data set ({len(entries)})"
    fig.update_layout(**style.layout("Scaling with model size", subtitle))
    return fig
