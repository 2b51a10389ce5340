"""The pieces both training phases share: precision, one optimizer step, lr setting.

``optimizer_step`` is where gradient accumulation, mixed precision and clipping
meet. The released SimMIM code clipped (and unscaled) inside the accumulation
loop, so each micro-batch's partial gradient was clipped on its own and the
scaler's unscale ran more than once per step; here the micro-batches only
accumulate, and the unscale, clip and step happen once, on the summed gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[mode]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr, keeping per-group scales (timm's layer decay sets ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def accumulate(
    model: nn.Module,
    micro_batches: Iterator[Any],
    accum_steps: int,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    scaler: torch.amp.GradScaler,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    """Forward/backward ``accum_steps`` micro-batches; returns their mean loss.

    Under DDP only the last micro-batch synchronizes gradients.
    """
    total = torch.zeros((), device=device)
    for i in range(accum_steps):
        batch = next(micro_batches)
        sync = i == accum_steps - 1 or not hasattr(model, "no_sync")
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            with autocast(device, dtype):
                loss = loss_fn(model, batch) / accum_steps
            scaler.scale(loss).backward()
        total += loss.detach().float()
    return float(total)


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad: float,
) -> float:
    """Unscale, clip and step once on the accumulated gradient; returns the grad norm."""
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_grad > 0:
        norm = float(nn.utils.clip_grad_norm_(params, clip_grad))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def is_finite(value: float) -> bool:
    return math.isfinite(value)
