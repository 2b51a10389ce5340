"""bench/bench_step.py runs the trial's step (the GPU path minus CUDA) with sane figures;
scripts/gpu_check.sh refuses a machine without CUDA, with a message."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_step", None)


def test_bf16_channels_last_both_ways_on_cpu(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "steps.json"
    argv = ["--models", "swinv2-nano", "--img-size", "32", "--batch", "4", "--amp", "bf16"]
    argv += ["--channels-last", "both", "--warmup", "1", "--steps", "2", "--device", "cpu"]
    argv += ["--peak-tflops", "1.0", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["channels_last"] for r in rows] == [False, True]
    for r in rows:
        assert r["model"] == "swinv2-nano" and r["batch"] == 4 and r["amp"] == "bf16"
        assert r["images_per_s"] == pytest.approx(4e3 / r["ms_per_step"])
        assert r["gflop_per_image"] > 0
        assert r["mfu"] == pytest.approx(r["tflop_per_s"] / 1.0)
    assert "swinv2-nano" in capsys.readouterr().out


def test_peak_lookup_prefers_the_specific_part(bench) -> None:
    assert bench.peak_tflops(torch.device("cpu"), None) is None
    assert bench.peak_tflops(torch.device("cpu"), 123.0) == 123.0
    names = dict(bench.PEAK_TFLOPS)
    assert names["H100 PCIe"] < names["H100"]
    keys = [k for k, _ in bench.PEAK_TFLOPS]
    assert keys.index("H100 PCIe") < keys.index("H100") and keys.index("H200") < keys.index("H100")


def test_unknown_model_names_the_flag(bench) -> None:
    with pytest.raises(Exception, match=r"--models.*swinv2-zz.*swinv2-b"):
        bench.main(["--models", "swinv2-zz", "--device", "cpu"])


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_gpu_check_says_there_is_no_gpu(tmp_path: Path) -> None:
    import subprocess

    script = BENCH.parents[1] / "scripts" / "gpu_check.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "sees no CUDA device (torch.cuda.is_available() is False)" in done.stderr
    assert not (tmp_path / "out").exists(), "nothing is written without a GPU"
