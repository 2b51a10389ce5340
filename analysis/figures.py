"""The report's figures (plotly): built from validated cells, curves and the fits dict.

``build_figures`` returns them in report order under stable names, which are also the
PNG file names. Scaling figures live in :mod:`analysis.figures_scaling`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style
from analysis.figures_scaling import scaling_vs_data, scaling_vs_model_size
from analysis.table import Results


def build_figures(results: Results, fits: dict[str, Any]) -> dict[str, go.Figure]:
    """All figures, keyed by name, in report order."""
    cells = results.cells
    return {
        "val_loss_vs_top1": val_loss_vs_top1(cells, fits),
        "overfitting_curves": overfitting_curves(cells, results.curves, fits),
        "scaling_vs_data": scaling_vs_data(cells, fits),
        "scaling_vs_model_size": scaling_vs_model_size(cells, fits),
        "best_top1_heatmap": best_top1_heatmap(cells),
    }


def val_loss_vs_top1(cells: pd.DataFrame, fits: dict[str, Any]) -> go.Figure:
    """Figure 1: one colour per model, overfitting cells ringed, the overall fit line."""
    cells = cells[np.isfinite(cells["val_loss"]) & np.isfinite(cells["finetune_top1"])]
    models = style.ordered(cells, "model", "params_m")
    colors = style.qualitative(models)
    corr = fits["correlation"]
    fig = go.Figure()
    for model in models:
        part = cells[cells["model"] == model]
        r = corr["by_model"].get(model, {}).get("pearson")
        fig.add_trace(
            go.Scatter(
                x=part["val_loss"],
                y=part["finetune_top1"],
                mode="markers",
                name=f"{model} (r = {style.fmt_ci(r)})" if r else str(model),
                marker={
                    "color": colors[model],
                    "size": 9,
                    "line": {"width": 0.5, "color": "white"},
                },
                customdata=part[["cell_id", "data", "iterations"]].to_numpy(),
                hovertemplate="%{customdata[0]}<br>data %{customdata[1]}, %{customdata[2]:,} it"
                "<br>val loss %{x:.4f}<br>top-1 %{y:.2f}<extra>" + str(model) + "</extra>",
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
                    "size": 16,
                    "color": style.OVERFIT_COLOR,
                    "line": {"width": 2},
                },
                hoverinfo="skip",
            )
        )
    line = fits["linear_fit"]["overall"]
    if "slope" in line:
        xs = np.linspace(cells["val_loss"].min(), cells["val_loss"].max(), 50)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=line["intercept"] + line["slope"] * xs,
                mode="lines",
                name=f"linear fit (LOO MAE {line['loo_mae']:.2f} pts)",
                line={"color": "black", "dash": "dash", "width": 1.5},
                hoverinfo="skip",
            )
        )
    overall = corr["overall"]
    subtitle = (
        f"Pearson r = {style.fmt_ci(overall.get('pearson'))}, "
        f"Spearman ρ = {style.fmt_ci(overall.get('spearman'))}, "
        f"Kendall τ = {style.fmt_ci(overall.get('kendall'))} (95% bootstrap CI), "
        f"n = {overall['n']}"
    )
    fig.update_layout(**style.layout("Validation loss vs fine-tuned top-1", subtitle))
    fig.update_xaxes(title_text="validation loss (masked L1, end of pre-training)")
    fig.update_yaxes(title_text="fine-tuned top-1 (%)")
    return style.note_if_empty(fig, cells.empty, "no cells with both val loss and top-1")


def overfitting_curves(
    cells: pd.DataFrame, curves: pd.DataFrame | None, fits: dict[str, Any]
) -> go.Figure:
    """Figure 2: train (dotted) and val (solid) loss vs iterations, a panel per model.

    With curves, each (model, data) shows the pre-training curves of its longest cell;
    without, the end-of-training losses of the cells across lengths.
    """
    models = style.ordered(cells, "model", "params_m")
    datas = style.ordered(cells, "data", "n_train_images")
    colors = style.sequential(datas)
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = make_subplots(
        rows=nrows,
        cols=ncols,
        subplot_titles=[str(m) for m in models],
        horizontal_spacing=0.06,
        vertical_spacing=0.12 if nrows > 1 else 0.1,
    )
    records = {(r["model"], r["data"]): r for r in fits["overfitting"]["by_model_data"]}
    shown: set[Any] = set()
    for i, model in enumerate(models):
        pos = {"row": i // ncols + 1, "col": i % ncols + 1}
        for data in datas:
            record = records.get((model, data))
            if record is None:
                continue
            lines = _curve_lines(cells, curves, record)
            name = f"{data} ({style.fmt_count(record['n_train_images'])} images)"
            for split, (x, y) in lines.items():
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines" if curves is not None else "lines+markers",
                        name=name,
                        legendgroup=str(data),
                        showlegend=data not in shown,
                        line={
                            "color": colors[data],
                            "dash": "solid" if split == "val" else "dot",
                            "width": 2 if split == "val" else 1.2,
                        },
                        hovertemplate=f"{data}, {split} loss<br>%{{x:,}} it: %{{y:.4f}}"
                        "<extra>" + str(model) + "</extra>",
                    ),
                    **pos,
                )
                shown.add(data)
            turn = _turn_point(record, curves is not None)
            if turn is not None:
                fig.add_trace(
                    go.Scatter(
                        x=[turn[0]],
                        y=[turn[1]],
                        mode="markers",
                        showlegend=False,
                        legendgroup=str(data),
                        marker={"symbol": "x", "size": 11, "color": style.OVERFIT_COLOR},
                        hovertemplate=f"{data}: val loss turns up at %{{x:,}} it<extra></extra>",
                    ),
                    **pos,
                )
    what = (
        "pre-training curves of the longest cell"
        if curves is not None
        else "end-of-training losses across lengths (no curves table)"
    )
    subtitle = f"{what}; solid: validation, dotted: training; ✕: val loss turns upward"
    fig.update_layout(
        **style.layout(
            "Overfitting: loss vs iterations",
            subtitle,
            height=max(style.FIG_HEIGHT, 340 * nrows + 120),
        )
    )
    fig.update_xaxes(title_text="iterations")
    fig.update_yaxes(title_text="loss", col=1)
    return fig


def _curve_lines(
    cells: pd.DataFrame, curves: pd.DataFrame | None, record: dict[str, Any]
) -> dict[str, tuple[list[float], list[float]]]:
    if curves is not None and record.get("curve"):
        part = curves[curves["cell_id"] == record["curve"]["cell_id"]]
        lines = {
            split: (g["step"].tolist(), g["value"].tolist())
            for split, g in part.groupby("split", sort=False)
            if split in ("train", "val")
        }
        # val first: the legend shows the first trace of a group (solid).
        return {k: lines[k] for k in ("val", "train") if k in lines}
    group = cells[(cells["model"] == record["model"]) & (cells["data"] == record["data"])]
    lines = {"val": (record["iterations"], record["val_loss"])}
    if "train_loss" in group and group["train_loss"].notna().any():
        train = group.groupby("iterations")["train_loss"].mean().sort_index().dropna()
        lines["train"] = (train.index.tolist(), train.tolist())
    return lines


def _turn_point(record: dict[str, Any], with_curves: bool) -> tuple[float, float] | None:
    curve = record.get("curve")
    if with_curves and curve and curve["overfits"]:
        return curve["turn_step"], curve["min_val_loss"]
    if record["rises_with_length"]:
        i = record["iterations"].index(record["best_iterations"])
        return record["best_iterations"], record["val_loss"][i]
    return None


def best_top1_heatmap(cells: pd.DataFrame) -> go.Figure:
    """Figure 4: model × data, the best top-1 over lengths and the length that gave it."""
    models = style.ordered(cells, "model", "params_m")
    datas = style.ordered(cells, "data", "n_train_images")
    rows = cells[np.isfinite(cells["finetune_top1"])]
    best = rows.loc[rows.groupby(["model", "data"])["finetune_top1"].idxmax()]
    best = best.set_index(["model", "data"])
    z, text = [], []
    for model in models:
        z.append([])
        text.append([])
        for data in datas:
            if (model, data) in best.index:
                row = best.loc[(model, data)]
                z[-1].append(float(row["finetune_top1"]))
                text[-1].append(
                    f"{row['finetune_top1']:.1f}<br>{style.fmt_count(row['iterations'])} it"
                )
            else:
                z[-1].append(None)
                text[-1].append("")
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(d) for d in datas],
            y=[str(m) for m in models],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": {"text": "top-1 %"}},
            hovertemplate="%{y} on %{x}<br>best top-1 %{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        **style.layout(
            "Best fine-tuned top-1 per model × data",
            "cell text: top-1 and the length that gave it",
            height=max(320, 70 * len(models) + 170),
        )
    )
    fig.update_xaxes(title_text="train data (by size)", type="category")
    fig.update_yaxes(title_text="model (by size)", type="category")
    return style.note_if_empty(fig, best.empty, "no cells with a fine-tuned top-1")
