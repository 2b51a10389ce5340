"""Pre-training step throughput: images/s and model FLOPs utilisation (MFU).

One step is the trial's own step, through the same functions
(``scaling.train.loop.accumulate`` and ``optimizer_step``): uint8 images normalized
on the device → forward (SimMIM loss) under autocast → backward → unscale,
clip_grad_norm_(5.0) → AdamW step (fused on CUDA), on synthetic images already
on the device and real SimMIM masks (data loading is benchmarked separately).
FLOPs per step come from FlopCounterMode on the meta device (``scaling.model.flops``),
not a formula.

CPU (default when there is no GPU): the tiny flavours at batch 32, fp32::

    python bench/bench_step.py

GPU: swinv2-b at 192 px, bf16 autocast, fused AdamW, every combination of
torch.compile and channels-last in one run (dynamo reset between them); the batch
halves on out-of-memory; every row prints its peak GPU memory::

    python bench/bench_step.py --models swinv2-b --batch 128 --compile both --channels-last both

Memory rows (GPU only): one step of each ``model:batch`` in ``--memory`` (default
swinv2-h and swinv2-g at their planned batch per GPU, 128 = 2048 / 16 ranks) under
each ``--checkpointing`` mode, its peak allocated memory beside
:mod:`scaling.study.memory`'s estimate of weights + gradients + AdamW + activations::

    python bench/bench_step.py --models none --memory swinv2-h:128,swinv2-g:128 \
        --checkpointing none,block,stage

MFU = (FLOPs per step / step time) / peak dense bf16 FLOP/s, the peak looked
up by device name (``PEAK_TFLOPS``) or given with ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.cell.pretrain import to_model_input
from scaling.data.masking import MaskGenerator
from scaling.model.build import count_params_m
from scaling.model.family import CHECKPOINTING
from scaling.model.flops import pretrain_flops_per_image
from scaling.model.simmim import build_simmim
from scaling.model.sizes import get_spec
from scaling.study.memory import estimate
from scaling.train.loop import accumulate, make_scaler, optimizer_step
from scaling.train.optim import build_pretrain_optimizer

# Dense bf16 tensor-core peaks in TFLOP/s, matched in order against the CUDA
# device name (so "H100 PCIe" is tried before plain "H100", which is the SXM part).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)

TINY = ("swinv2-nano", "swinv2-micro", "vit-nano")
MEMORY_ROWS = "swinv2-h:128,swinv2-g:128"
"""The big sizes at their planned batch per GPU (2048 over 16 ranks)."""


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """One benchmarked configuration."""

    model: str
    img_size: int
    batch: int
    amp: str
    compile: bool
    channels_last: bool
    checkpointing: str
    ms_per_step: float
    images_per_s: float
    gflop_per_image: float
    tflop_per_s: float
    mfu: float | None
    peak_gib: float | None
    """Peak allocated GPU memory of the timed steps (None on the CPU)."""


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Peak dense bf16 TFLOP/s of ``device``: the override, the table, or None."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def _masks(name: str, img_size: int, mask_patch: int, batch: int) -> torch.Tensor:
    gen = MaskGenerator(
        input_size=img_size, mask_patch_size=mask_patch, model_patch_size=get_spec(name).patch_size
    )
    return torch.from_numpy(np.stack([gen(0, 0, i) for i in range(batch)]))  # (B, h, w)


def run_config(
    name: str,
    *,
    img_size: int,
    mask_patch: int,
    batch: int,
    amp: str,
    compile_model: bool,
    channels_last: bool,
    warmup: int,
    steps: int,
    device: torch.device,
    peak: float | None,
    checkpointing: str = "none",
) -> StepResult:
    """Time ``steps`` training steps after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # no compiled graph or guard of an earlier configuration
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_simmim(name, img_size=img_size, drop_path_rate=0.1, checkpointing=checkpointing)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8)
    masks = _masks(name, img_size, mask_patch, batch)
    on_device = (images.to(device), masks.to(device))
    optimizer = build_pretrain_optimizer(model, lr=1e-4)
    forward = torch.compile(model) if compile_model else model
    dtype = {"bf16": torch.bfloat16, "fp32": None}[amp]
    scaler = make_scaler(device, dtype)

    def simmim_loss(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return m(*to_model_input(b, device, channels_last))

    def step() -> None:
        accumulate(forward, itertools.repeat(on_device), 1, simmim_loss, scaler, device, dtype)
        optimizer_step(model, optimizer, scaler, clip_grad=5.0)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    flops = pretrain_flops_per_image(name, img_size=img_size, mask_patch_size=mask_patch)
    achieved = flops * batch / seconds
    return StepResult(
        model=name,
        img_size=img_size,
        batch=batch,
        amp=amp,
        compile=compile_model,
        channels_last=channels_last,
        checkpointing=checkpointing,
        ms_per_step=1e3 * seconds,
        images_per_s=batch / seconds,
        gflop_per_image=flops / 1e9,
        tflop_per_s=achieved / 1e12,
        mfu=achieved / (peak * 1e12) if peak else None,
        peak_gib=peak_bytes / 2**30 if peak_bytes is not None else None,
    )


def free_memory(device: torch.device) -> None:
    """Drop what a finished or failed configuration left: graphs, cached blocks."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_fitting(name: str, *, batch: int, device: torch.device, **kwargs: object) -> StepResult:
    """``run_config``, halving the batch on CUDA out-of-memory."""
    while True:
        try:
            return run_config(name, batch=batch, device=device, **kwargs)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # outside the except: its traceback no longer pins the failed run's tensors
        free_memory(device)
        batch //= 2
        print(f"# out of memory, retrying {name} at batch {batch}", flush=True)


def _switch(value: str) -> list[bool]:
    return {"on": [True], "off": [False], "both": [False, True]}[value]


def _row(r: StepResult) -> str:
    mfu = f"{100 * r.mfu:5.1f}%" if r.mfu is not None else "     -"
    mem = f"{r.peak_gib:8.1f}" if r.peak_gib is not None else "       -"
    return (
        f"{r.model:<13} {r.img_size:>4} {r.batch:>6} {r.amp:>5} {'on' if r.compile else 'off':>7} "
        f"{'on' if r.channels_last else 'off':>8} {r.checkpointing:>6} {r.ms_per_step:>9.1f} "
        f"{r.images_per_s:>8.1f} {r.gflop_per_image:>9.2f} {r.tflop_per_s:>8.2f} {mfu} {mem}"
    )


def memory_rows(spec: str, modes: list[str], device: torch.device, amp: str) -> list[str]:
    """One step per ``model:batch`` and checkpointing mode: measured peak vs the estimate."""
    if device.type != "cuda":
        line = f"# memory rows {spec}: unmeasured (no GPU); run: bash scripts/gpu_check.sh"
        print(line, flush=True)
        return [line]
    lines = [f"{'model':<13} {'batch':>6} {'ckpt':>6} {'peak GiB':>9} {'estimate':>9}"]
    print(lines[0], flush=True)
    for entry in spec.split(","):
        name, _, batch = entry.partition(":")
        model_spec = get_spec(name, key="--memory")
        img = model_spec.img_size
        for mode in modes:
            est = estimate(
                name,
                params_m=count_params_m(name, img),
                batch_per_rank=int(batch),
                img_size=img,
                checkpointing=mode,
                amp=amp,
            )
            try:
                r = run_config(
                    name,
                    img_size=img,
                    mask_patch=32,
                    batch=int(batch),
                    amp=amp,
                    compile_model=False,
                    channels_last=True,
                    warmup=1,
                    steps=1,
                    device=device,
                    peak=None,
                    checkpointing=mode,
                )
                measured = f"{r.peak_gib:9.1f}"
            except torch.OutOfMemoryError:
                measured = f"{'OOM':>9}"
            free_memory(device)
            expected = est.state_gib + est.activation_gib  # allocated: no CUDA context
            lines.append(f"{name:<13} {batch:>6} {mode:>6} {measured} {expected:9.1f}")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="swinv2-b" if cuda else ",".join(TINY))
    parser.add_argument("--img-size", type=int, default=0, help="0: each model's default")
    parser.add_argument("--mask-patch", type=int, default=0, help="0: 32 (16 below 96 px)")
    parser.add_argument("--batch", type=int, default=128 if cuda else 32)
    parser.add_argument("--amp", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    switch = ("on", "off", "both")
    parser.add_argument("--compile", choices=switch, default="both" if cuda else "off")
    parser.add_argument("--channels-last", choices=switch, default="both" if cuda else "off")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 3)
    parser.add_argument("--steps", type=int, default=20 if cuda else 10)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument(
        "--checkpointing", default="none", help=f"comma list of {', '.join(CHECKPOINTING)}"
    )
    parser.add_argument(
        "--memory",
        default=MEMORY_ROWS if cuda else "",
        help="model:batch,… peak-memory rows (GPU; '' skips)",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        # SwinV2's many small CPU ops suffer badly from OpenMP spin-waits on a
        # busy machine; one thread per process is often faster there
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(
        f"# device {device.type}: {where}, {torch.get_num_threads()} CPU threads, "
        f"peak {peak or '?'} TFLOP/s; torch {torch.__version__}, timm {timm.__version__}"
    )
    modes = args.checkpointing.split(",")
    bad = [m for m in modes if m not in CHECKPOINTING]
    if bad:
        parser.error(f"--checkpointing: unknown {bad}; valid: {', '.join(CHECKPOINTING)}")
    print(
        f"{'model':<13} {'img':>4} {'batch':>6} {'amp':>5} {'compile':>7} {'ch_last':>8} "
        f"{'ckpt':>6} {'ms/step':>9} {'img/s':>8} {'GFLOP/im':>9} {'TFLOP/s':>8}   MFU "
        f"{'peak GiB':>8}"
    )
    results = []
    for name in [] if args.models == "none" else args.models.split(","):
        spec = get_spec(name, key="--models")
        img = args.img_size or spec.img_size
        mask_patch = args.mask_patch or (32 if img >= 96 else 16)
        for compile_model, channels_last, mode in itertools.product(
            _switch(args.compile), _switch(args.channels_last), modes
        ):
            result = run_fitting(
                name,
                batch=args.batch,
                device=device,
                img_size=img,
                mask_patch=mask_patch,
                amp=args.amp,
                compile_model=compile_model,
                channels_last=channels_last,
                warmup=args.warmup,
                steps=args.steps,
                peak=peak,
                checkpointing=mode,
            )
            results.append(result)
            print(_row(result), flush=True)
            free_memory(device)
    if args.memory:
        memory_rows(args.memory, modes, device, args.amp)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
