"""Number flags of every verb are range-checked by argparse: exit 2 and the flag named."""

from __future__ import annotations

import re

import pytest

from scaling.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "s.toml", "--progress-interval", "-1"], r"--progress-interval: must be in \[0.1"),
        (["run", "s.toml", "--progress-interval", "nan"], r"--progress-interval: must be in"),
        (["run", "s.toml", "--connect-timeout", "inf"], r"--connect-timeout: must be in \[1, "),
        (["run", "s.toml", "--wait", "nan"], r"argument --wait: must be in \[0, 2678400\]"),
        (["analyze", "x", "-o", "y", "--seed", "-1"], r"argument --seed: must be in \[0, "),
        (["analyze", "x", "-o", "y", "--seed", "1.5"], r"argument --seed: not int: '1.5'"),
        (["subsets", "build", "--seed", "-5"], r"argument --seed: must be in \[0, "),
        (["subsets", "build", "--workers", "0"], r"argument --workers: must be in \[1, 1024\]"),
        (["subsets", "build", "--holdout-per-class", "0"], r"--holdout-per-class: must be >= 1"),
        (["subsets", "verify", "m.parquet", "--root", "r", "--limit", "-1"], r"--limit: must be"),
    ],
)
def test_number_flags_are_range_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
