"""PNG export of the figures through kaleido and a system Chromium.

kaleido (>= 1.0) drives a Chromium-based browser that must be installed separately:
on Debian/Ubuntu ``apt-get install chromium`` (``scripts/ensure_chromium.sh`` does it).
kaleido finds the browser on PATH (``chromium``, ``google-chrome``, …) or through the
``BROWSER_PATH`` environment variable, e.g. ``BROWSER_PATH=/usr/bin/chromium``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import plotly.graph_objects as go

from analysis import style
from analysis.errors import AnalysisError

log = logging.getLogger(__name__)

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = (
    "PNG export needs kaleido and a Chromium browser: `apt-get install chromium` "
    "(or set BROWSER_PATH to a Chrome/Chromium binary); run without --png to skip PNGs"
)


def find_browser() -> str | None:
    """The browser kaleido will use: BROWSER_PATH if set, else the first one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).is_file() else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _quiet_browser_logs() -> None:
    """kaleido and choreographer log every tab at INFO; keep them for --verbose only."""
    if log.getEffectiveLevel() <= logging.DEBUG:
        return
    for name in ("kaleido", "choreographer", "logistro"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def render_pngs(figures: dict[str, go.Figure]) -> dict[str, bytes]:
    """Render every figure to PNG bytes in one browser session."""
    browser = find_browser()
    if browser is None:
        raise AnalysisError(f"no Chromium found. {INSTALL_HINT}")
    try:
        import kaleido  # noqa: F401 - plotly needs it; a clear message if it is absent
        import plotly.io as pio
    except ImportError as err:
        raise AnalysisError(f"kaleido is not installed. {INSTALL_HINT}") from err
    env_before = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = browser
    log.info("rendering %d PNGs with %s", len(figures), browser)
    _quiet_browser_logs()
    try:
        with tempfile.TemporaryDirectory(prefix="mimscale-png-") as tmp:
            paths = [Path(tmp) / f"{name}.png" for name in figures]
            heights = [fig.layout.height or style.FIG_HEIGHT for fig in figures.values()]
            pio.write_images(
                list(figures.values()), paths, format="png", width=style.PNG_WIDTH, height=heights
            )
            # kaleido can drop a figure without an error when the browser is slow to answer
            # (a loaded machine): render the missing ones again, one at a time
            for _ in range(2):
                for fig, path, height in zip(figures.values(), paths, heights, strict=True):
                    if not path.exists():
                        log.info("rendering %s again", path.name)
                        pio.write_image(
                            fig, path, format="png", width=style.PNG_WIDTH, height=height
                        )
            return {name: path.read_bytes() for name, path in zip(figures, paths, strict=True)}
    except AnalysisError:
        raise
    except Exception as err:
        raise AnalysisError(
            f"PNG export failed ({type(err).__name__}: {err}). {INSTALL_HINT}"
        ) from err
    finally:
        if env_before is None:
            os.environ.pop("BROWSER_PATH", None)
        else:
            os.environ["BROWSER_PATH"] = env_before
