"""Number arguments of the command lines, range-checked where argparse reads them.

``type=number_in(int, 0)`` makes ``--seed -1`` an argparse error (``argument --seed: must
be >= 0, got '-1'``, exit 2) instead of a value every later step must doubt; floats must
also be finite (``nan`` and ``inf`` parse as floats).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _range(low: float | None, high: float | None) -> str:
    if high is None:
        return f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"in [{low}, {high}]"


def number_in(
    kind: type[int] | type[float], low: float | None = None, high: float | None = None
) -> Callable[[str], int | float]:
    """An argparse ``type``: ``kind(text)``, finite, within ``[low, high]`` (None: open)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind.__name__}: {text!r}") from None
        inside = (low is None or value >= low) and (high is None or value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be {_range(low, high)}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
