"""bench/bench_decode.py runs end to end (few steps, few images) and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # ~25 s: four tiny trainings
def test_bench_decode_prints_pixels_and_a_2x2_val_loss_table(tmp_path: Path) -> None:
    env = {**os.environ, "MIMSCALE_BENCH_CACHE": str(tmp_path), "MIMSCALE_DEVICE": "cpu"}
    argv = [sys.executable, "bench/bench_decode.py", "--steps", "2", "--pixel-images", "40"]
    argv += ["--seeds", "2"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"pixels, demo set \(40 images, 32 px\): \|fast - exact\| mean [\d.]+", out)
    assert re.search(r"^ +train fast +\d\.\d{5} +\d\.\d{5}$", out, re.M)
    assert re.search(r"^ +train exact +\d\.\d{5} +\d\.\d{5}$", out, re.M)
    assert re.search(r"on exact val pixels: [-+][\d.]+ \([-+][\d.]+%\); per seed [-+][\d.]+, "
                     r"[-+][\d.]+; seed-to-seed range", out)  # fmt: skip
