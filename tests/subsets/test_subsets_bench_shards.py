"""bench/bench_shards.py runs every storage and pipeline on a small set and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~20 s: builds a set, a pack and a local S3 server
def test_bench_shards_on_a_small_set(tmp_path: Path) -> None:
    env = {**os.environ, "MIMSCALE_BENCH_CACHE": str(tmp_path)}
    argv = [sys.executable, "bench/bench_shards.py", "--images", "120", "--seconds", "0.2"]
    argv += ["--repeat", "1", "--delay-ms", "1", "--s3", "--gpu"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    storage = r"^(local|local-cold|slow \(1 ms\)|s3 \(moto\))"
    ratio = r" +[\d,]+ +[\d.]+×"  # images/s and the ratio to per-file
    rows = re.findall(rf"{storage} +(bytes|decode|exact|gpu-wkr) +[\d,]+{ratio}({ratio})?$",
                      done.stdout, flags=re.M)  # fmt: skip
    assert len(rows) == 16, done.stdout
    with_pixels = [(s, kind) for s, kind, pixels in rows if pixels]
    assert len(with_pixels) == 9 and "gpu-wkr" not in {kind for _, kind in with_pixels}
    assert "HTTP/1.1" not in done.stdout + done.stderr
    assert re.search(r"^gpu decode: (unmeasured|\(.*\): workers [\d,]+ img/s)", done.stdout, re.M)
