"""The representation-diagnostics figure and the method / proxy tables of the report.

After Xie et al., "Revealing the Dark Secrets of Masked Image Modeling": per layer, the
average attention distance (pixels), the attention entropy (nats) and the head diversity
(mean KL between heads), each averaged over heads, one line per cell, coloured by
method (dashed lines for a second, third … model of a method).
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import style
from analysis.html_fits import table

PANELS = (
    ("distance_px", "attention distance (px)"),
    ("entropy", "attention entropy (nats)"),
    ("head_kl", "head diversity (KL)"),
)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def per_layer(diagnostics: pd.DataFrame, cells: pd.DataFrame) -> go.Figure:
    """Three panels of per-layer statistics, one line per cell (see module docstring)."""
    methods = cells.set_index("cell_id")["method"] if "method" in cells else None
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[t for _, t in PANELS])
    names = sorted(set(diagnostics["cell_id"]))
    colors = style.qualitative(sorted({_method(methods, c) for c in names}))
    models = cells.set_index("cell_id")["model"]
    dash = {m: DASHES[i % len(DASHES)] for i, m in enumerate(dict.fromkeys(models))}
    for col, (metric, _) in enumerate(PANELS, start=1):
        part = diagnostics[(diagnostics["metric"] == metric) & (diagnostics["layer"] >= 0)]
        means = part.groupby(["cell_id", "layer"], sort=True)["value"].mean()
        for cell_id in names:
            if cell_id not in means.index.get_level_values(0):
                continue
            line = means.loc[cell_id]
            method = _method(methods, cell_id)
            style_ = {"color": colors[method], "dash": dash.get(models.get(cell_id), "solid")}
            hover = f"{cell_id} ({method})<br>layer %{{x}}: %{{y:.4g}}<extra></extra>"
            trace = go.Scatter(
                x=line.index.to_numpy(),
                y=line.to_numpy(),
                mode="lines+markers",
                name=str(cell_id),
                legendgroup=str(cell_id),
                showlegend=col == 1,
                line=style_,
                hovertemplate=hover,
            )
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(
        title="Representation diagnostics per layer (one line per cell, colour: method)",
        height=style.FIG_HEIGHT,
        font={"family": style.FONT},
    )
    return fig


def _method(methods: pd.Series | None, cell_id: Any) -> str:
    if methods is None or cell_id not in methods.index:
        return "simmim"
    return str(methods.loc[cell_id])


def methods_tables(fits: dict[str, Any]) -> str:
    """The per-method correlations and the proxy ranking, overall and per method."""
    m = fits.get("methods")
    if not m:
        return ""
    rows = [[k, *_corr(v)] for k, v in m["by_method"].items()]
    rows.append(["all, on within-method ranks", *_corr(m["across_methods"])])
    out = ["<h3>Val loss and top-1 within each method</h3>"]
    out.append(table(["method", "n", "Spearman ρ [95% CI]", "Kendall τ [95% CI]"], rows))
    groups = [("all methods (z-scored within method)", m["proxies"]["overall"])]
    groups += [(k, v) for k, v in m["proxies"]["by_method"].items()]
    for name, ranking in groups:
        out.append(f"<h3>Which proxy predicts top-1 best: {html.escape(str(name))}</h3>")
        out.append(_proxy_table(ranking))
    return "\n".join(out)


def _corr(res: dict[str, Any]) -> list[Any]:
    if "skipped" in res:
        return [res["n"], f"skipped: {res['skipped']}", ""]
    return [res["n"], style.fmt_ci(res.get("spearman")), style.fmt_ci(res.get("kendall"))]


def _proxy_table(ranking: list[dict[str, Any]]) -> str:
    header = ["rank", "proxy", "n", "Spearman ρ [95% CI]", "Kendall τ [95% CI]", "LOO MAE (pts)"]
    rows = []
    for i, r in enumerate(ranking, start=1):
        if "skipped" in r:
            rows.append(["-", r["proxy"], r["n"], f"skipped: {r['skipped']}", "", ""])
        else:
            ci = (style.fmt_ci(r["spearman"]), style.fmt_ci(r["kendall"]))
            rows.append([i, r["proxy"], r["n"], *ci, r["loo_mae"]])
    return table(header, rows, text_cols=2, formats=[None, None, None, None, None, ".2f"])
