"""The report's figures (plotly): built from validated cells, curves and the fits dict.

``build_figures`` returns them in report order under stable names, which are also the
PNG file names. Scaling figures live in :mod:`analysis.figures_scaling`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import style
from analysis.figures_diagnostics import per_layer
from analysis.figures_heatmap import heatmap
from analysis.figures_overfit import overfitting_curves
from analysis.figures_scaling import scaling_vs_data, scaling_vs_model_size
from analysis.fits import line_band
from analysis.table import Results


def build_figures(
    results: Results, fits: dict[str, Any], published: Results | None = None
) -> dict[str, go.Figure]:
    """All figures, keyed by name, in report order; ``published`` cells are overlaid."""
    cells = results.cells
    ref = published.cells if published is not None else None
    figs = {
        "val_loss_vs_top1": val_loss_vs_top1(cells, fits, ref),
        "overfitting_curves": overfitting_curves(cells, results.curves, fits),
        "scaling_vs_data": scaling_vs_data(cells, fits, ref),
        "scaling_vs_model_size": scaling_vs_model_size(cells, fits),
        "top1_heatmap": heatmap(cells, fits, "finetune_top1"),
        "val_loss_heatmap": heatmap(cells, fits, "val_loss"),
    }
    if results.diagnostics is not None and not results.diagnostics.empty:
        figs["diagnostics_per_layer"] = per_layer(results.diagnostics, cells)
    return figs


LENGTH_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star")


def val_loss_vs_top1(
    cells: pd.DataFrame, fits: dict[str, Any], published: pd.DataFrame | None = None
) -> go.Figure:
    """Figure 1: colour by model, shape by length, a line per model, the overall line with
    its 95% band, overfitting cells ringed, published cells (grey) when given."""
    cells = cells[np.isfinite(cells["val_loss"]) & np.isfinite(cells["finetune_top1"])]
    models = style.ordered(cells, "model", "params_m")
    colors = style.qualitative(models)
    lengths = sorted(cells["iterations"].unique())
    symbols = {it: LENGTH_SYMBOLS[i % len(LENGTH_SYMBOLS)] for i, it in enumerate(lengths)}
    corr, lines = fits["correlation"], fits["linear_fit"]
    fig = go.Figure()
    _overall_line(fig, lines["overall"])
    if published is not None:
        fig.add_trace(_published_points(published))
    for model in models:
        part = cells[cells["model"] == model]
        r = corr["by_model"].get(model, {}).get("pearson")
        name = f"{model} (r = {style.fmt_ci(r)})" if r else str(model)
        fig.add_trace(
            go.Scatter(
                x=part["val_loss"],
                y=part["finetune_top1"],
                mode="markers",
                name=name,
                legendgroup=str(model),
                marker={
                    "color": colors[model],
                    "symbol": [symbols[it] for it in part["iterations"]],
                    "size": 10,
                    "line": {"width": 0.5, "color": "white"},
                },
                customdata=part[["cell_id", "data", "iterations"]].to_numpy(),
                hovertemplate="%{customdata[0]}<br>data %{customdata[1]}, %{customdata[2]:,} it"
                "<br>val loss %{x:.4f}<br>top-1 %{y:.2f}<extra>" + str(model) + "</extra>",
                **_sd_bars(part, colors[model]),
            )
        )
        line = lines["by_model"].get(model, {})
        if "slope" in line:
            xs = np.linspace(*line["x_range"], 20)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=line["intercept"] + line["slope"] * xs,
                    mode="lines",
                    legendgroup=str(model),
                    showlegend=False,
                    line={"color": colors[model], "width": 1.2},
                    hoverinfo="skip",
                )
            )
    for it in lengths:  # legend entries for the shapes
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=f"{style.fmt_count(it)} it",
                marker={"symbol": symbols[it], "color": "#888", "size": 9},
            )
        )
    over = cells[cells["cell_id"].isin(fits["overfitting"]["overfitting_cells"])]
    if not over.empty:
        fig.add_trace(
            go.Scatter(
                x=over["val_loss"],
                y=over["finetune_top1"],
                mode="markers",
                name="overfitting cell",
                marker={
                    "symbol": "circle-open",
                    "size": 17,
                    "color": style.OVERFIT_COLOR,
                    "line": {"width": 2},
                },
                hoverinfo="skip",
            )
        )
    overall = corr["overall"]
    method = (overall.get("pearson") or {}).get("ci_method", "")
    subtitle = (
        f"Pearson r = {style.fmt_ci(overall.get('pearson'))}, "
        f"Spearman ρ = {style.fmt_ci(overall.get('spearman'))}, "
        f"Kendall τ = {style.fmt_ci(overall.get('kendall'))} (95% CI, {method}), "
        f"n = {overall['n']}"
    )
    height = max(style.FIG_HEIGHT, 30 * (len(models) + len(lengths) + 4) + 170)  # the legend
    fig.update_layout(**style.layout("Validation loss vs fine-tuned top-1", subtitle, height))
    fig.update_xaxes(title_text="validation loss (masked L1, end of pre-training)")
    fig.update_yaxes(title_text="fine-tuned top-1 (%)")
    return style.note_if_empty(fig, cells.empty, "no cells with both val loss and top-1")


def _sd_bars(part: pd.DataFrame, color: str) -> dict[str, Any]:
    """± 1 sd over seeds when cells are means of replicates."""
    bars = {}
    for axis, col in (("error_x", "val_loss_sd"), ("error_y", "finetune_top1_sd")):
        if col in part and part[col].notna().any():
            bars[axis] = {"array": part[col].fillna(0.0), "color": color, "thickness": 1}
    return bars


def _overall_line(fig: go.Figure, line: dict[str, Any]) -> None:
    """The overall least-squares line with the 95% band of its mean."""
    if "slope" not in line:
        return
    xs = np.linspace(*line["x_range"], 50)
    ys = line["intercept"] + line["slope"] * xs
    half = line_band(line, xs)
    fig.add_trace(
        go.Scatter(
            x=np.concatenate([xs, xs[::-1]]),
            y=np.concatenate([ys + half, (ys - half)[::-1]]),
            fill="toself",
            fillcolor="rgba(0,0,0,0.08)",
            line={"width": 0},
            name="95% band of the overall line",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            name=f"all cells: linear fit (LOO MAE {line['loo_mae']:.2f} pts)",
            line={"color": "#444", "dash": "dash", "width": 1.5},
            hoverinfo="skip",
        )
    )


def _published_points(published: pd.DataFrame) -> go.Scatter:
    return go.Scatter(
        x=published["val_loss"],
        y=published["finetune_top1"],
        mode="markers",
        name="published (reference)",
        marker={"symbol": "x-thin-open", "size": 8, "color": "#999", "line": {"width": 1.5}},
        customdata=published[["model", "data", "iterations"]].to_numpy(),
        hovertemplate="published %{customdata[0]} %{customdata[1]} %{customdata[2]:,} it"
        "<br>val loss %{x:.4f}<br>top-1 %{y:.2f}<extra></extra>",
    )
