"""A real headless Chromium opens report.html from disk; kaleido renders the PNGs.

Needs Debian's Chromium at /usr/bin/chromium (``scripts/ensure_chromium.sh`` installs it);
the tests skip with that reason when it is absent.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from analysis_fixtures import write_study

from analysis.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIGURES = 6

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Chromium at /usr/bin/chromium (run scripts/ensure_chromium.sh)",
    ),
]


def _distinct_colors(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 24))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("paper", marks=pytest.mark.slow)])
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report with PNGs for both tests, kaleido rendering through Debian's Chromium: the
    synthetic study (with curves), and the published table (IN-22K, cells not run)."""
    pytest.importorskip("kaleido", reason="needs the kaleido package")
    source = write_study(tmp_path_factory.mktemp("study")) if request.param == "synthetic" else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BROWSER_PATH", str(CHROMIUM))
        out = tmp_path_factory.mktemp(f"out-{request.param}")
        return write_report(source, out, png=True, reference_name="paper")


def test_report_renders_in_headless_chromium(report: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.goto(report.as_uri(), wait_until="load", timeout=60_000)
            page.wait_for_function(
                f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {FIGURES}",
                timeout=30_000,
            )
            plots = page.eval_on_selector_all(
                ".plotly-graph-div",
                """divs => divs.map(d => ({
                    id: d.id,
                    svgs: d.querySelectorAll('.main-svg').length,
                    marks: d.querySelectorAll('.main-svg .trace, .main-svg .hm').length,
                    height: d.getBoundingClientRect().height,
                }))""",
            )
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(plots) == FIGURES
    for plot in plots:
        assert plot["svgs"] > 0 and plot["marks"] > 0 and plot["height"] > 200, plot
    assert _distinct_colors(shot) > 500  # a blank or unstyled page has a handful
    (report.parent / "screenshot.png").write_bytes(shot)  # kept for a look by eye


def test_png_export_with_kaleido(report: Path) -> None:
    pngs = sorted(report.parent.glob("fig*.png"))
    assert [p.name for p in pngs] == [
        "fig1_val_loss_vs_top1.png",
        "fig2_overfitting_curves.png",
        "fig3_scaling_vs_data.png",
        "fig4_scaling_vs_model_size.png",
        "fig5_top1_heatmap.png",
        "fig6_val_loss_heatmap.png",
    ]
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert _distinct_colors(data) > 100, png.name
