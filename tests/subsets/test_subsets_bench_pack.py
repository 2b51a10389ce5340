"""bench/bench_pack.py runs end to end on a small set and prints its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from subsets.shards import open_pack

REPO = Path(__file__).resolve().parents[2]


def test_bench_pack_on_a_small_set(tmp_path: Path) -> None:
    env = {**os.environ, "MIMSCALE_BENCH_CACHE": str(tmp_path)}
    argv = [sys.executable, "bench/bench_pack.py", "--images", "300", "--shard-size", "200k"]
    argv += ["--block-size", "64k"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"pack: [\d,]+ images/s \([\d,]+ MiB/s\).*peak RSS [\d,]+ MiB", done.stdout)
    assert re.search(r"baseline, reading the same files only .*: [\d,]+ images/s", done.stdout)
    pack = open_pack(tmp_path / "pack50k")
    assert len(pack) == 300 and len(pack.shards) >= 2 and pack.verify() == {}
