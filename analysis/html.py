"""The self-contained HTML report: summary, figures (plotly.js embedded once), tables.

Opens offline from disk: no script, style sheet or font is fetched from anywhere.
Element ids are fixed, so the same results give the same bytes.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from analysis import style
from analysis.figures_diagnostics import methods_tables
from analysis.html_fits import power_law_table as _power_law_table
from analysis.html_fits import reference_table
from analysis.html_fits import table as _table
from analysis.table import Results

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
CELL_TABLE_COLUMNS = (
    "cell_id", "model", "params_m", "data", "n_train_images", "iterations", "batch_size",
    "epochs_seen", "n_seeds", "train_loss", "val_loss", "val_loss_sd", "finetune_top1",
    "finetune_top1_sd", "finetune_top5",
    "pretrain_flops", "gpu_hours", "wall_s",
)  # fmt: skip
CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; font-size: 1.25em; }
.meta { color: #555; } .figure { margin: 0.5em 0 1em; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; } td.text, th.text { text-align: left; }
tr.overfit td { background: #fdecea; } .scroll { max-height: 600px; overflow: auto; }
ul.summary li { margin: 0.3em 0; } .note { color: #555; font-size: 0.9em; }
"""


def render_report(results: Results, fits: dict[str, Any], figures: dict[str, go.Figure]) -> str:
    """The whole page as one string."""
    title = _title(fits)
    body = [f"<h1>{_e(title)}</h1>", _meta(results, fits), _summary(fits)]
    plots = [_figure(name, fig, i == 0) for i, (name, fig) in enumerate(figures.items())]
    sections = {
        "val_loss_vs_top1": [
            _correlation_table(fits),
            _split_table(fits),
            _linear_table(fits),
            _ranking_table(fits),
            methods_tables(fits),
            reference_table(fits),
        ],
        "overfitting_curves": [_overfit_table(fits)],
        "scaling_vs_data": [_power_law_table(fits)],
    }
    for (name, _), plot in zip(figures.items(), plots, strict=True):
        body.append(plot)
        body.extend(sections.get(name, []))
    body.append(_cells_table(results, fits))
    body.append(_methods(fits))
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _title(fits: dict[str, Any]) -> str:
    name = (fits.get("study") or {}).get("name")
    return f"mimscale analysis — {name}" if name else "mimscale analysis"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _figure(name: str, fig: go.Figure, first: bool) -> str:
    div = pio.to_html(
        fig,
        include_plotlyjs=first,  # plotly.js inline, once, before the first plot
        full_html=False,
        div_id=f"fig-{name}",
        config=PLOT_CONFIG,
        default_height=f"{fig.layout.height or style.FIG_HEIGHT}px",
    )
    return f"<div class='figure' id='figure-{name}'>{div}</div>"


def _meta(results: Results, fits: dict[str, Any]) -> str:
    counts = fits["cells"]
    lines = [
        f"source: <code>{_e(results.source)}</code>",
        f"{counts['complete']} complete cells of {counts['rows']} rows",
    ]
    study = fits.get("study") or {}
    if study.get("hash"):
        lines.append(f"study hash <code>{_e(study['hash'])}</code>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in fits["notes"])
    return f"<p class='meta'>{' · '.join(lines)}</p>" + (
        f"<ul class='note'>{notes}</ul>" if notes else ""
    )


def _summary(fits: dict[str, Any]) -> str:
    corr, line, rank = (
        fits["correlation"]["overall"],
        fits["linear_fit"]["overall"],
        fits["ranking"],
    )
    items = []
    if "skipped" in corr:
        items.append(f"Correlation not computed: {_e(corr['skipped'])}.")
    else:
        items.append(
            f"Validation loss vs fine-tuned top-1 over {corr['n']} cells: Pearson r = "
            f"{style.fmt_ci(corr['pearson'])}, Spearman ρ = {style.fmt_ci(corr['spearman'])}, "
            f"Kendall τ = {style.fmt_ci(corr['kendall'])} "
            f"(95% intervals: {_e(corr['pearson']['ci_method'])})."
        )
    split = fits["correlation_split"]
    over, rest = split["overfitting"], split["not_overfitting"]
    if "pearson" in over and "pearson" in rest:
        items.append(
            f"Pearson r within the {rest['n']} cells of non-overfitting (model, data) pairs: "
            f"{style.fmt_ci(rest['pearson'])}; within the {over['n']} cells of overfitting "
            f"pairs: {style.fmt_ci(over['pearson'])}."
        )
    if "loo_mae" in line:
        items.append(
            f"A line top-1 = {line['intercept']:.2f} {line['slope']:+.2f} · val_loss predicts "
            f"a held-out cell's top-1 within {line['loo_mae']:.2f} points on average "
            f"(leave-one-out; worst {line['loo_max_abs_error']:.2f})."
        )
    for key, what in (
        ("model", "cell of a model"),
        ("model_data", "length"),
        ("model_iterations", "data set"),
    ):
        r = rank[key]
        if r["n_groups"]:
            items.append(
                f"Lowest val loss picks the best {what} by top-1 in {r['hits']} of "
                f"{r['n_groups']} cases (mean top-1 given up: {r['mean_regret_points']:.2f} pts)."
            )
    over = fits["overfitting"]["by_model_data"]
    flagged = [f"{r['model']} on {r['data']}" for r in over if r["overfits"]]
    items.append(
        f"Overfitting in {len(flagged)} of {len(over)} (model, data) pairs"
        + (f": {_e(', '.join(flagged))}." if flagged else ".")
    )
    lis = "".join(f"<li>{i}</li>" for i in items)
    title = "<h2>Can validation loss pick models without fine-tuning?</h2>"
    return f"{title}<ul class='summary'>{lis}</ul>"


def _correlation_table(fits: dict[str, Any]) -> str:
    corr = fits["correlation"]
    groups = [("overall", "all cells", corr["overall"])]
    groups += [("model", k, v) for k, v in corr["by_model"].items()]
    groups += [("iterations", style.fmt_count(k), v) for k, v in corr["by_iterations"].items()]
    rows = []
    for kind, name, res in groups:
        rows.append([kind, *_corr_row(name, res, ("pearson", "spearman", "kendall"))])
    header = [
        "group", "", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]", "Kendall τ [95% CI]",
        "interval method",
    ]  # fmt: skip
    return "<h3>Correlation of val loss with top-1</h3>" + _table(header, rows, text_cols=2)


def _split_table(fits: dict[str, Any]) -> str:
    split = fits["correlation_split"]
    groups = (("not overfitting", "not_overfitting"), ("overfitting", "overfitting"))
    return "<h3>Correlation within overfitting and non-overfitting (model, data) pairs</h3>" + (
        _table(
            ["cells of", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]", "interval method"],
            [_corr_row(label, split[key], ("pearson", "spearman")) for label, key in groups],
        )
    )


def _corr_row(label: str, res: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    if "skipped" in res:
        return [label, res["n"], f"skipped: {res['skipped']}", *[""] * len(names)]
    return [label, res["n"], *(style.fmt_ci(res[m]) for m in names), res[names[0]]["ci_method"]]


def _linear_table(fits: dict[str, Any]) -> str:
    lin = fits["linear_fit"]
    rows = []
    for name, res in [("all cells", lin["overall"]), *lin["by_model"].items()]:
        if "skipped" in res:
            rows.append([name, res["n"], "", "", "", f"skipped: {res['skipped']}"])
        else:
            rows.append([name, res["n"], res["slope"], res["intercept"], res["r2"], res["loo_mae"]])
    header = ["group", "n", "slope (pts per loss unit)", "intercept", "R²", "LOO MAE (pts)"]
    formats = [None, None, ".2f", ".2f", ".3f", ".2f"]
    return "<h3>Linear fit of top-1 on val loss</h3>" + _table(header, rows, formats=formats)


def _ranking_table(fits: dict[str, Any]) -> str:
    what = {
        "model": "model: any data × length",
        "model_data": "(model, data): the length",
        "model_iterations": "(model, length): the data set",
    }
    rows = [
        [what[k], r["n_groups"], r["hits"], r["hit_rate"], r["mean_regret_points"]]
        for k, r in fits["ranking"].items()
    ]
    header = ["lowest val loss picks, within", "groups", "hits", "hit rate", "mean regret (pts)"]
    formats = [None, None, None, ".2f", ".2f"]
    return "<h3>Ranking agreement</h3>" + _table(header, rows, formats=formats)


def _overfit_table(fits: dict[str, Any]) -> str:
    settings = fits["overfitting"]["settings"]
    rows, cls = [], []
    for r in fits["overfitting"]["by_model_data"]:
        curve = r["curve"] or {}
        rows.append(
            [
                r["model"],
                r["data"],
                ", ".join(style.fmt_count(i) for i in r["iterations"]),
                style.fmt_count(r["best_iterations"]) if r["best_iterations"] else "",
                style.fmt_count(r["best_top1_iterations"]) if r["best_top1_iterations"] else "",
                "" if r["rel_rise"] is None else f"{r['rel_rise']:+.2%}",
                "yes" if r["rises_with_length"] else "no",
                style.fmt_count(curve["turn_step"]) if curve.get("turn_step") else "",
                {True: "yes", False: "no", None: ""}[curve.get("train_falling")],
                "yes" if r["overfits"] else "no",
            ]
        )
        cls.append("overfit" if r["overfits"] else "")
    header = [
        "model",
        "data",
        "lengths",
        "best length (val loss)",
        "best length (top-1)",
        f"val loss rise, longest vs best (tolerance {settings['rel_tol']:.1%})",
        "rises with length",
        "curve turns at",
        "train loss falling",
        "overfits",
    ]
    return "<h3>Overfitting per (model, data)</h3>" + _table(header, rows, text_cols=3, cls=cls)


def _cells_table(results: Results, fits: dict[str, Any]) -> str:
    cells = results.cells
    cols = [c for c in CELL_TABLE_COLUMNS if c in cells]
    over = set(fits["overfitting"]["overfitting_cells"])
    rows = [[row[c] for c in cols] for _, row in cells[cols].iterrows()]
    cls = ["overfit" if cid in over else "" for cid in cells["cell_id"]]
    formats = [style.COLUMN_FORMATS.get(c) for c in cols]
    out = (
        f"<h2>Cells ({len(cells)} complete; shaded: overfitting)</h2>"
        f"<div class='scroll'>{_table(cols, rows, text_cols=2, cls=cls, formats=formats)}</div>"
    )
    if results.excluded_cells is not None:
        ex = results.excluded_cells
        ex_cols = [
            c for c in ("cell_id", "model", "data", "iterations", "status", "error") if c in ex
        ]
        ex_rows = [[row[c] for c in ex_cols] for _, row in ex[ex_cols].iterrows()]
        out += f"<h3>Excluded cells ({len(ex)})</h3>" + _table(ex_cols, ex_rows, text_cols=2)
    return out


def _methods(fits: dict[str, Any]) -> str:
    s = fits["settings"]
    family = fits["scaling"]["data_family"]
    seeds = fits["cells"].get("max_seeds", 1)
    replicate = (
        f"Cells with several seeds (up to {seeds}) are their means over seeds (± sample sd); "
        "correlations use the cell means. "
        if seeds > 1
        else ""
    )
    return (
        "<h2>Methods</h2><p class='note'>"
        f"Correlation intervals (95%): {_e(s['correlation_intervals'])}; {s['n_resamples']} "
        f"resamples, seed {s['seed']}; groups with fewer than 3 cells are skipped. {replicate}"
        "Leave-one-out error of the least-squares line in top-1 points; the band around the "
        "overall line is the 95% interval of its mean. Overfitting: the val loss of the longest "
        f"length is more than {s['overfit_rel_tol']:.2%} above the best length's; along a "
        f"curve, the running median (window {s['overfit_window']}) has its minimum, then the "
        f"last {s['overfit_patience']} points stay above it by that margin while the training "
        "loss ends lower than at the turn. The split correlation uses the cells of the "
        "overfitting pairs and the rest. Power law: E + A·D^-α, multi-start least squares with "
        f"a soft-L1 loss; intervals {_e(s['power_law_intervals'])}. Data: "
        f"{_e(family['rule'])}. Every number is also in fits.json.</p>"
    )
