"""Flags of the study verbs at their edges (found by an adversarial pass over the CLI's
inputs): ``plan --peak-tflops inf`` (or ``1e400``) was accepted and printed 0 GPU-hours;
the shared message "--mfu must be in (0, 1] and --peak-tflops > 0" named neither the
flag at fault nor its value."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.cli import main

QUICKSTART = Path(__file__).parents[3] / "studies" / "quickstart.toml"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--peak-tflops", "inf"], "--peak-tflops must be a finite number > 0, got inf"),
        (["--peak-tflops", "1e400"], "--peak-tflops must be a finite number > 0, got inf"),
        (["--peak-tflops", "nan"], "--peak-tflops must be a finite number > 0, got nan"),
        (["--peak-tflops", "0"], "--peak-tflops must be a finite number > 0, got 0.0"),
        (["--mfu", "nan"], "--mfu must be in (0, 1], got nan"),
        (["--mfu", "1.5"], "--mfu must be in (0, 1], got 1.5"),
        (["--mfu", "0"], "--mfu must be in (0, 1], got 0.0"),
    ],
)
def test_plan_names_the_flag_out_of_range(flags: list[str], message: str, capsys) -> None:
    assert main(["plan", str(QUICKSTART), *flags]) == 2
    captured = capsys.readouterr()
    assert f"error: {message}\n" in captured.err and not captured.out
