"""The report's figures (plotly): built from validated cells, curves and the fits dict.

``build_figures`` returns them in report order under stable names, which are also the
PNG file names. Scaling figures live in :mod:`analysis.figures_scaling`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style
from analysis.figures_heatmap import heatmap
from analysis.figures_scaling import scaling_vs_data, scaling_vs_model_size
from analysis.fits import line_band
from analysis.table import Results


def build_figures(
    results: Results, fits: dict[str, Any], published: Results | None = None
) -> dict[str, go.Figure]:
    """All figures, keyed by name, in report order; ``published`` cells are overlaid."""
    cells = results.cells
    ref = published.cells if published is not None else None
    return {
        "val_loss_vs_top1": val_loss_vs_top1(cells, fits, ref),
        "overfitting_curves": overfitting_curves(cells, results.curves, fits),
        "scaling_vs_data": scaling_vs_data(cells, fits, ref),
        "scaling_vs_model_size": scaling_vs_model_size(cells, fits),
        "top1_heatmap": heatmap(cells, fits, "finetune_top1"),
        "val_loss_heatmap": heatmap(cells, fits, "val_loss"),
    }


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


def overfitting_curves(
    cells: pd.DataFrame, curves: pd.DataFrame | None, fits: dict[str, Any]
) -> go.Figure:
    """Figure 2: a row per model; left, val (solid) and train (dotted) loss vs iterations,
    right, fine-tuned top-1 vs length; one colour per data set; shared y ranges and a
    log2 length axis. With curves, the loss panel shows the pre-training curves of each
    (model, data)'s longest cell; without, the end-of-training losses across lengths."""
    models = style.ordered(cells, "model", "params_m")
    datas = style.ordered(cells, "data", "n_train_images")
    colors = style.sequential(datas)
    fig = make_subplots(
        rows=len(models),
        cols=2,
        column_widths=[0.62, 0.38],
        subplot_titles=[t for m in models for t in (f"{m}: loss", f"{m}: fine-tuned top-1")],
        horizontal_spacing=0.08,
        vertical_spacing=min(0.12, 0.5 / max(len(models), 1)),
    )
    records = {(r["model"], r["data"]): r for r in fits["overfitting"]["by_model_data"]}
    tol = fits["overfitting"]["settings"]["rel_tol"]
    has_train, shown = False, set()
    for i, model in enumerate(models, start=1):
        rises = []
        for data in datas:
            record = records.get((model, data))
            if record is None:
                continue
            show = data not in shown
            shown.add(data)
            has_train |= _loss_traces(fig, i, cells, curves, record, colors[data], show)
            _top1_trace(fig, i, record, colors[data])
            if record["overfits"] and record.get("rel_rise") is not None:
                rises.append(f"{data} +{record['rel_rise']:.1%}")
        if rises:
            text = "val loss rise, longest vs best length: " + ", ".join(rises)
            fig.add_annotation(
                text=f"{text} (tolerance {tol:.1%})",
                xref="x domain" if i == 1 else f"x{2 * i - 1} domain",
                yref="y domain" if i == 1 else f"y{2 * i - 1} domain",
                x=0.0, y=1.0, xanchor="left", yanchor="top", showarrow=False,
                font={"size": 10, "color": style.OVERFIT_COLOR}, bgcolor="rgba(255,255,255,0.7)",
            )  # fmt: skip
    what = (
        "pre-training curves of the longest cell"
        if curves is not None
        else "end-of-training losses across lengths (no curves table)"
    )
    lines = "solid: validation, dotted: training; " if has_train else "validation loss; "
    subtitle = f"{what}; {lines}✕: val loss turns upward; shared y range per column"
    fig.update_layout(
        **style.layout(
            "Overfitting: loss and fine-tuned top-1 vs training length",
            subtitle,
            height=max(style.FIG_HEIGHT, 260 * len(models) + 120),
        )
    )
    _shared_axes(fig, cells, curves)
    return fig


def _shared_axes(fig: go.Figure, cells: pd.DataFrame, curves: pd.DataFrame | None) -> None:
    """Log2 length axes with the lengths as ticks; one y range per column."""
    lengths = sorted(float(v) for v in cells["iterations"].unique())
    lo = lengths[0] if curves is None else float(curves["step"].min())
    # the lengths and their halvings down to the first logged step: round log2 ticks
    ticks = sorted({v / 2**k for v in lengths for k in range(12) if v / 2**k >= lo * 0.99})
    fig.update_xaxes(
        type="log",
        tickvals=ticks,
        ticktext=[style.fmt_count(t) for t in ticks],
        title_text="iterations (log2 scale)",
    )
    for col in (1, 2):
        values = [
            v
            for trace in fig.data
            if trace.xaxis in _axes_of_column(fig, col, "x")
            for v in (trace.y or ())
            if v is not None and np.isfinite(v)
        ]
        if values:
            span = max(values) - min(values) or abs(max(values)) or 1.0
            # headroom at the top of the loss panels for the rise note
            top = 0.22 if col == 1 else 0.05
            fig.update_yaxes(range=[min(values) - 0.05 * span, max(values) + top * span], col=col)
    fig.update_yaxes(title_text="loss", col=1)
    fig.update_yaxes(title_text="top-1 (%)", col=2)


def _axes_of_column(fig: go.Figure, col: int, axis: str) -> set[str]:
    rows = len(fig._grid_ref)  # plotly keeps the subplot grid here
    return {axis if (r * 2 + col) == 1 else f"{axis}{r * 2 + col}" for r in range(rows)}


def _loss_traces(
    fig: go.Figure,
    row: int,
    cells: pd.DataFrame,
    curves: pd.DataFrame | None,
    record: dict[str, Any],
    color: str,
    show: bool,
) -> bool:
    """Val (and train) loss of one (model, data); returns whether a train line was drawn."""
    data, model = record["data"], record["model"]
    name = f"{data} ({style.fmt_count(record['n_train_images'])} images)"
    lines = _curve_lines(cells, curves, record)
    for split, (x, y) in lines.items():
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines" if curves is not None else "lines+markers",
                name=name,
                legendgroup=str(data),
                showlegend=show and split == "val",
                line={
                    "color": color,
                    "dash": "solid" if split == "val" else "dot",
                    "width": 2 if split == "val" else 1.2,
                },
                hovertemplate=f"{data}, {split} loss<br>%{{x:,}} it: %{{y:.4f}}"
                "<extra>" + str(model) + "</extra>",
            ),
            row=row,
            col=1,
        )
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
            row=row,
            col=1,
        )
    return "train" in lines


def _top1_trace(fig: go.Figure, row: int, record: dict[str, Any], color: str) -> None:
    pairs = [
        (it, v)
        for it, v in zip(record["iterations"], record["finetune_top1"], strict=True)
        if v is not None
    ]
    if not pairs:
        return
    x, y = zip(*pairs, strict=True)
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=list(y),
            mode="lines+markers",
            showlegend=False,
            legendgroup=str(record["data"]),
            line={"color": color, "width": 1.5},
            hovertemplate=f"{record['data']}: %{{x:,}} it, top-1 %{{y:.2f}}"
            f"<extra>{record['model']}</extra>",
        ),
        row=row,
        col=2,
    )


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
