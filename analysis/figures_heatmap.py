"""Heat maps model × data: the best fine-tuned top-1 and the lowest val loss over lengths."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import style

# metric -> (pick the best with, number format, colour scale, label)
HEATMAPS: dict[str, tuple[str, str, str, str]] = {
    "finetune_top1": ("idxmax", ".2f", "Viridis", "best fine-tuned top-1 (%)"),
    "val_loss": ("idxmin", ".4f", "Viridis_r", "lowest validation loss"),
}
NOT_RUN = "not run"


def heatmap(cells: pd.DataFrame, fits: dict[str, Any], metric: str) -> go.Figure:
    """Model × data: the best value of ``metric`` over lengths, the length that gave it,
    ``▲`` on overfitting (model, data) pairs, and "not run" where a pair has no cell."""
    pick, fmt, scale, label = HEATMAPS[metric]
    models = style.ordered(cells, "model", "params_m")
    datas = style.ordered(cells, "data", "n_train_images")
    rows = cells[np.isfinite(cells[metric])]
    best = rows.loc[getattr(rows.groupby(["model", "data"])[metric], pick)()]
    best = best.set_index(["model", "data"])
    ran = set(zip(cells["model"], cells["data"], strict=True))
    over = {(r["model"], r["data"]) for r in fits["overfitting"]["by_model_data"] if r["overfits"]}
    z, text = [], []
    for model in models:
        z.append([])
        text.append([])
        for data in datas:
            if (model, data) in best.index:
                row = best.loc[(model, data)]
                mark = " ▲" if (model, data) in over else ""
                z[-1].append(float(row[metric]))
                text[-1].append(
                    f"{row[metric]:{fmt}}{mark}<br>{style.fmt_count(row['iterations'])} it"
                )
            else:
                z[-1].append(None)
                text[-1].append(NOT_RUN if (model, data) not in ran else "no value")
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(d) for d in datas],
            y=[str(m) for m in models],
            text=text,
            texttemplate="%{text}",
            colorscale=scale,
            colorbar={"title": {"text": label.split(" (")[0]}},
            hovertemplate=f"%{{y}} on %{{x}}<br>{label} %{{z:{fmt}}}<extra></extra>",
        )
    )
    title = f"{label[0].upper()}{label[1:]} per model × data"
    subtitle = "cell text: the value and the length that gave it; ▲: overfitting pair"
    fig.update_layout(
        **style.layout(title, subtitle, height=max(320, 70 * len(models) + 170)),
        plot_bgcolor="#f2f2f2",  # "not run" cells show the background
    )
    fig.update_layout(margin={"l": 110})  # model names in full
    fig.update_xaxes(title_text="train data (by size)", type="category", showgrid=False)
    fig.update_yaxes(title_text="model (by size)", type="category", showgrid=False)
    return style.note_if_empty(fig, best.empty, f"no cells with a {metric}")
