"""bench/bench_methods.py: the diagnostics stage timed through the real stage, and its
argument errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_methods.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_methods", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_methods"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_methods", None)


def test_diagnostics_stage_is_timed_through_run_stage(bench, tmp_path: Path) -> None:
    seconds = bench.time_diagnostics_stage("vit-nano", images=8, batch=4, root=tmp_path)
    assert 0 < seconds < 60
    stores = sorted(tmp_path.glob("store-vit-nano-*"))
    assert len(stores) == 2
    for store in stores:
        (stage,) = (store / "stages" / "diagnostics").iterdir()
        assert (stage / "diagnostics.parquet").is_file() and (stage / "result.parquet").is_file()


@pytest.mark.parametrize("flag", ["--diag-images", "--diag-batch"])
def test_a_bad_count_exits_2_naming_the_flag(bench, flag: str, capsys) -> None:
    assert bench.main([flag, "0"]) == 2
    assert f"error: {flag}: must be ≥ 1" in capsys.readouterr().err
