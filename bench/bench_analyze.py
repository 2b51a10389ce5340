"""``mimscale analyze`` on the paper's released 63-cell table: seconds per run.

Times the whole verb in process (load + validate, fits with 2000 bootstrap resamples,
figures, HTML, fits.json; no PNGs) and the fits alone, best and median of a few rounds::

    .venv/bin/python bench/bench_analyze.py
    .venv/bin/python bench/bench_analyze.py --rounds 5

The budget (issue 11) is 5 s for the whole verb on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.reference import load_reference
from analysis.report import analyze, write_report

BUDGET_S = 5.0


def _time(fn: object, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        verb = _time(
            lambda: write_report(None, Path(tmp) / "out", reference_name="paper"), args.rounds
        )
    results = load_reference("paper")
    fits = _time(lambda: analyze(results), args.rounds)
    for label, times in (("analyze --reference paper (63 cells)", verb), ("fits only", fits)):
        print(f"{label:40s} best {min(times):.2f} s, median {statistics.median(times):.2f} s")
    ok = min(verb) <= BUDGET_S
    print(f"budget {BUDGET_S:.0f} s: {'ok' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
