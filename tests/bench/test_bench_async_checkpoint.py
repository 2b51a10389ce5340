"""bench/bench_async_checkpoint.py runs both modes over 2 gloo ranks and prints its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~15 s: two spawned ranks
@pytest.mark.parametrize("parallelism", ["fsdp", "ddp"])
def test_bench_async_checkpoint_prints_both_modes(parallelism: str) -> None:
    argv = [sys.executable, "bench/bench_async_checkpoint.py", "--model", "swinv2-nano"]
    argv += ["--image-size", "64", "--repeat", "1", "--parallelism", parallelism]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = dict(re.findall(r"^(sync|async) +([\d.]+) +[\d.]+$", done.stdout, flags=re.M))
    assert set(rows) == {"sync", "async"} and all(float(v) > 0 for v in rows.values())
    assert re.search(r"^training blocked: async [\d.]+× shorter than sync$", done.stdout, re.M)
    assert re.search(r"^checkpoint: [\d,]+ MiB", done.stdout, re.M)
