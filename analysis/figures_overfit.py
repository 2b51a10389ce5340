"""Figure 2, overfitting: per model, loss vs training length (curves or cell ends) next to
fine-tuned top-1 vs length, on log2 length axes with shared y ranges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style


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
