"""Scaling figures: top-1 and val loss versus data size and versus model size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style
from analysis.scaling_fit import power_law


def scaling_vs_data(cells: pd.DataFrame, fits: dict[str, Any]) -> go.Figure:
    """Top-1 (top row) and val loss (bottom row) vs data size; a column per model, a line
    per length, and the power-law fit dotted where there is one."""
    models = style.ordered(cells, "model", "params_m")
    lengths = sorted(cells["iterations"].unique())
    colors = style.sequential(lengths, "Plasma")
    fig = make_subplots(
        rows=2,
        cols=len(models),
        subplot_titles=[str(m) for m in models],
        shared_xaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.08,
    )
    shown: set[Any] = set()
    for entry in fits["scaling"]["vs_data"]:
        col = models.index(entry["model"]) + 1
        it, d = entry["iterations"], np.asarray(entry["n_train_images"], dtype=float)
        name = f"{style.fmt_count(it)} it"
        for row, key, fit_key in (
            (1, "finetune_top1", "top1_error_fit"),
            (2, "val_loss", "val_loss_fit"),
        ):
            y = np.array([np.nan if v is None else v for v in entry[key]], dtype=float)
            fig.add_trace(
                go.Scatter(
                    x=d,
                    y=y,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=it not in shown,
                    line={"color": colors[it]},
                    hovertemplate=f"{name}<br>%{{x:,}} images: %{{y:.4g}}"
                    f"<extra>{entry['model']}</extra>",
                ),
                row=row,
                col=col,
            )
            shown.add(it)
            fit = entry[fit_key]
            if "skipped" not in fit:
                xs = np.geomspace(d.min(), d.max(), 40)
                ys = power_law(xs, fit["E"], fit["A"], fit["alpha"])
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=100.0 - ys if row == 1 else ys,
                        mode="lines",
                        line={"color": colors[it], "dash": "dot", "width": 1},
                        legendgroup=name,
                        showlegend=False,
                        hovertemplate=f"fit: E={fit['E']:.4g}, α={fit['alpha']:.3g}<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
    fig.update_xaxes(type="log", row=2, title_text="train images")
    fig.update_xaxes(type="log", row=1)
    fig.update_yaxes(title_text="fine-tuned top-1 (%)", row=1, col=1)
    fig.update_yaxes(title_text="validation loss", row=2, col=1)
    subtitle = "a column per model, a line per training length; dotted: E + A·D^-α fit"
    fig.update_layout(**style.layout("Scaling with data size", subtitle, height=640))
    return fig


def scaling_vs_model_size(cells: pd.DataFrame, fits: dict[str, Any]) -> go.Figure:
    """Best top-1 over lengths (left) and lowest val loss (right) vs parameters, per data."""
    datas = [e["data"] for e in fits["scaling"]["vs_model_size"]]
    order = style.ordered(cells, "data", "n_train_images")
    colors = style.sequential(order)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["best top-1 over lengths", "lowest validation loss"],
    )
    for entry in sorted(fits["scaling"]["vs_model_size"], key=lambda e: order.index(e["data"])):
        data = entry["data"]
        name = f"{data} ({style.fmt_count(entry['n_train_images'])} images)"
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
                    line={"color": colors[data]},
                    customdata=custom,
                    hovertemplate="%{customdata[0]} (%{x:.4g}M params)<br>%{y:.4g}"
                    f"<extra>{data}</extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", title_text="encoder parameters (millions)")
    fig.update_yaxes(title_text="fine-tuned top-1 (%)", col=1)
    fig.update_yaxes(title_text="validation loss", col=2)
    subtitle = f"a line per train data set ({len(datas)})"
    fig.update_layout(**style.layout("Scaling with model size", subtitle))
    return fig
