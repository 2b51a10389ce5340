"""Report tables of the fits: the generic table, power laws, the reference comparison.

Numbers are formatted by column kind (``style.COLUMN_FORMATS``): val losses with 4
decimals, accuracies and points with 2, correlations with 2, counts with thousands
separators, so one quantity reads the same in every table.
"""

from __future__ import annotations

import html
from typing import Any

from analysis import style


def _e(value: Any) -> str:
    return html.escape(str(value))


def table(
    header: list[str],
    rows: list[list[Any]],
    text_cols: int = 1,
    cls: list[str] | None = None,
    formats: list[str | None] | None = None,
) -> str:
    """An HTML table; ``formats`` gives a format spec per column (None: ``fmt_num``)."""

    def cell(tag: str, i: int, v: Any) -> str:
        klass = " class='text'" if i < text_cols else ""
        spec = formats[i] if formats and i < len(formats) else None
        return f"<{tag}{klass}>{_e(style.fmt_value(v, spec))}</{tag}>"

    head = "".join(
        f"<th{' class=' + chr(39) + 'text' + chr(39) if i < text_cols else ''}>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for j, row in enumerate(rows):
        klass = f" class='{cls[j]}'" if cls and cls[j] else ""
        body.append(f"<tr{klass}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def power_law_table(fits: dict[str, Any]) -> str:
    """One row per fitted (model, length, target): parameters, intervals when the fit has
    the degrees of freedom for them, and the parameters that sit on a bound."""
    rows, cls = [], []
    for entry in fits["scaling"]["vs_data"]:
        for key, target in (("val_loss_fit", "val loss"), ("top1_error_fit", "top-1 error (%)")):
            fit = entry[key]
            if "skipped" in fit:
                continue
            ci = fit.get("intervals") or {}
            rows.append(
                [
                    entry["model"],
                    style.fmt_count(entry["iterations"]),
                    target,
                    fit["n"],
                    *(_with_ci(fit[p], ci.get(p)) for p in ("E", "A", "alpha")),
                    f"{fit['rmse']:.2g}",
                    ", ".join(fit["at_bound"]) or "—",
                    fit["interval_method"],
                ]
            )
            cls.append("overfit" if fit["at_bound"] else "")
    family = fits["scaling"]["data_family"]
    title = "<h3>Power-law fits y = E + A·D<sup>−α</sup> (D: train images)</h3>"
    note = f"<p class='note'>{_e(family['rule'])}. Shaded: a parameter on its bound.</p>"
    if not rows:
        return title + "<p class='note'>No (model, length) series with enough data sizes.</p>"
    header = [
        "model", "length", "target", "n", "E [95% CI]", "A [95% CI]", "α [95% CI]", "RMSE",
        "at bound", "intervals",
    ]  # fmt: skip
    return title + note + table(header, rows, text_cols=3, cls=cls)


def _with_ci(value: float, ci: list[float | None] | None) -> str:
    if not ci:
        return f"{value:.4g}"
    lo, hi = (("∞" if v is None else f"{v:.3g}") for v in ci)
    return f"{value:.4g} [{lo}, {hi}]"


def reference_table(fits: dict[str, Any]) -> str:
    """The study's cells next to the published ones with the same (model, data, length)."""
    ref = fits.get("reference")
    if not ref:
        return ""
    title = f"<h3>Compared with {_e(ref['title'])}</h3>"
    source = f"<p class='note'>source: {_e(ref['source'])}; "
    if not ref["matched"]:
        return (
            title
            + source
            + (
                f"none of the {ref['n_published']} published cells matches a cell of this study "
                "on (model, data, iterations); they are overlaid on the figures.</p>"
            )
        )
    source += (
        f"{ref['n_matched']} cells match; mean |Δ val loss| "
        f"{style.fmt_value(ref['mean_abs_val_loss_diff'], '.4f')}, mean |Δ top-1| "
        f"{style.fmt_value(ref['mean_abs_top1_diff'], '.2f')} pts (Δ = this study − published)"
        ".</p>"
    )
    rows = [
        [
            m["model"], m["data"], m["iterations"], m["val_loss"], m["val_loss_published"],
            m["val_loss_diff"], m["finetune_top1"], m["finetune_top1_published"],
            m["finetune_top1_diff"],
        ]
        for m in ref["matched"]
    ]  # fmt: skip
    header = [
        "model", "data", "iterations", "val loss", "published", "Δ", "top-1 (%)", "published",
        "Δ (pts)",
    ]  # fmt: skip
    formats = [None, None, None, ".4f", ".4f", "+.4f", ".2f", ".2f", "+.2f"]
    return title + source + table(header, rows, text_cols=2, formats=formats)
