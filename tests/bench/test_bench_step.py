"""bench/bench_step.py runs the trial's step (the GPU path minus CUDA) with sane figures;
scripts/gpu_check.sh refuses a machine without CUDA, with a message."""

from __future__ import annotations

import importlib.util
import json
import re
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
    argv += ["--peak-tflops", "1.0", "--json", str(out), "--checkpointing", "none,block"]
    argv += ["--memory", "swinv2-h:128"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["channels_last"], r["checkpointing"]) for r in rows] == [
        (False, "none"),
        (False, "block"),
        (True, "none"),
        (True, "block"),
    ]
    for r in rows:
        assert r["model"] == "swinv2-nano" and r["batch"] == 4 and r["amp"] == "bf16"
        assert r["images_per_s"] == pytest.approx(4e3 / r["ms_per_step"])
        assert r["gflop_per_image"] > 0
        assert r["mfu"] == pytest.approx(r["tflop_per_s"] / 1.0)
        assert r["peak_gib"] is None  # no GPU: no peak memory
    printed = capsys.readouterr().out
    assert "swinv2-nano" in printed and "peak GiB" in printed
    unmeasured = "memory rows swinv2-h:128: unmeasured (no GPU); run: bash scripts/gpu_check.sh"
    assert unmeasured in printed


def test_unknown_checkpointing_mode_is_refused(bench, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--models", "swinv2-nano", "--checkpointing", "none,layer", "--device", "cpu"])
    assert exit_.value.code == 2
    message = "--checkpointing: unknown ['layer']; valid: none, block, stage"
    assert message in capsys.readouterr().err


def test_peak_lookup_prefers_the_specific_part(bench) -> None:
    assert bench.peak_tflops(torch.device("cpu"), None) is None
    assert bench.peak_tflops(torch.device("cpu"), 123.0) == 123.0
    names = dict(bench.PEAK_TFLOPS)
    assert names["H100 PCIe"] < names["H100"]
    keys = [k for k, _ in bench.PEAK_TFLOPS]
    assert keys.index("H100 PCIe") < keys.index("H100") and keys.index("H200") < keys.index("H100")
    # the first key a device name contains wins
    for device, peak in [
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
    ]:
        assert next(p for k, p in bench.PEAK_TFLOPS if k in device) == peak, device


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


def test_gpu_check_names_what_is_missing(tmp_path: Path) -> None:
    import subprocess

    script = BENCH.parents[1] / "scripts" / "gpu_check.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "/usr/bin/python3", "OUT": str(tmp_path / "out")}
    probe = subprocess.run(["/usr/bin/python3", "-c", "import simplejpeg"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the system python3 has simplejpeg")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert re.search(r"gpu_check: /usr/bin/python3 lacks: .*simplejpeg", done.stderr), done.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when a need is missing"
