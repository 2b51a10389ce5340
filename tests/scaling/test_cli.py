"""The one CLI: every verb registered, and ``--help`` imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "plotly", "pandas", "pyarrow", "timm", "scipy")
VERBS = ("subsets", "plan", "run", "status", "trial", "analyze")


@pytest.mark.parametrize("argv", [["--help"], *[[verb, "--help"] for verb in VERBS]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from scaling.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert "usage: mimscale" in out.stdout


def test_top_level_help_lists_every_verb() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "scaling", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in VERBS:
        assert verb in out


def test_no_verb_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "scaling"], capture_output=True, text=True)
    assert result.returncode == 2
