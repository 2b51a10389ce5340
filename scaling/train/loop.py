"""The pieces both training phases share: precision, one optimizer step, lr setting,
and the loop itself (:class:`Phase`).

``optimizer_step`` is where gradient accumulation, mixed precision and clipping
meet. The released SimMIM code clipped (and unscaled) inside the accumulation
loop, so each micro-batch's partial gradient was clipped on its own and the
scaler's unscale ran more than once per step; here the micro-batches only
accumulate, and the unscale, clip and step happen once, on the summed gradient.

Nothing in a step reads a value back from the GPU: losses stay on the device
and are read a window at a time (:class:`LossWindow`), so the host runs ahead
and queues the next step's kernels while the GPU works.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
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
) -> torch.Tensor:
    """Forward/backward ``accum_steps`` micro-batches; returns their mean loss.

    The loss stays on the device (a 0-d float32 tensor): reading it would wait for
    the GPU, so the loop reads a window of them at once (:class:`LossWindow`).
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
    return total


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad: float,
) -> torch.Tensor:
    """Unscale, clip and step once on the accumulated gradient; returns the grad norm
    (on the device, unread)."""
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_grad > 0:
        norm = nn.utils.clip_grad_norm_(params, clip_grad)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (the cell turns it into a CellError)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"non-finite loss {value} at step {step}")
        self.step, self.value = step, value


class LossWindow:
    """Per-step losses kept on the device and read in bulk.

    ``add`` costs nothing; ``read`` copies the pending losses to the host in one
    transfer (averaged over the ranks under DDP, so every rank sees the same
    values and raises together), raises :class:`NonFiniteLoss` at the first
    non-finite one, and moves them to the window that ``mean`` averages. The
    loop reads at every log, evaluation and checkpoint step, so no checkpoint or
    validation loss ever comes from a model that has seen a non-finite loss.
    """

    def __init__(self, values: list[float] | None = None) -> None:
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._values: list[float] = list(values or [])
        """Losses read since the last ``mean``: a checkpoint keeps them (:meth:`state`)."""
        self._norms: list[float] = []
        """Gradient norms read since the last ``mean`` (logged, not checkpointed)."""

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        if grad_norm is None:
            norm = loss.new_full((), math.nan)
        else:  # FSDP2 clips to a DTensor: its whole value (every rank calls this)
            norm = getattr(grad_norm, "full_tensor", lambda: grad_norm)().detach()
        self._pending.append((step, loss, norm))

    def read(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        # losses and gradient norms in one transfer: (n, 2)
        stacked = torch.stack([torch.stack([v, n.float()]) for _, v, n in pending]).double()
        if distributed():
            dist.all_reduce(stacked)
            stacked /= dist.get_world_size()
        rows = stacked.tolist()
        for (step, _, _), (value, _) in zip(pending, rows, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLoss(step, value)
        self._values.extend(value for value, _ in rows)
        self._norms.extend(norm for _, norm in rows if math.isfinite(norm))

    def grad_norm(self) -> float:
        """Mean gradient norm of the window (NaN without one); :meth:`mean` clears it."""
        self.read()
        return sum(self._norms) / len(self._norms) if self._norms else math.nan

    def state(self) -> list[float]:
        """The losses of the current log window (read first): what resume needs to log the
        same mean at the next log step as an uninterrupted run."""
        self.read()
        return list(self._values)

    def mean(self) -> float:
        """Mean of the losses read since the last ``mean``; clears them."""
        self.read()
        value = sum(self._values) / max(len(self._values), 1)
        self._values.clear()
        self._norms.clear()
        return value


@dataclass(kw_only=True)
class Phase:
    """One training phase's loop: what differs between pre-training and fine-tuning.

    The body runs in one fixed order for every step ``s`` (0-based, ``s`` steps
    done so far): lr(s) → evaluate (every ``eval_interval``, not at 0) →
    forward/backward over the micro-batches → unscale, clip, step → log (every
    ``log_interval`` and at the end) → ``after_step`` → checkpoint (every
    ``checkpoint_interval``, not at the end). The final evaluation and the
    result checkpoint are the caller's.
    """

    iterations: int
    lr_of: Callable[[int], float]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    accum_steps: int
    clip_grad: float
    log_interval: int
    eval_interval: int
    checkpoint_interval: int
    evaluate: Callable[[int, float], None]
    """Called as ``evaluate(step, lr)`` at the evaluation steps."""
    log: Callable[[int, float, float], None]
    """Called as ``log(step, mean train loss since the last log, lr)``."""
    checkpoint: Callable[[int, list[float]], None]
    """Called as ``checkpoint(step, losses of the open log window)`` at the checkpoint steps."""
    after_step: Callable[[int], None] = lambda step: None
    log_grad_norm: Callable[[int, float], None] | None = None
    """Called as ``log_grad_norm(step, mean gradient norm of the window)`` before ``log``."""
    save_at: frozenset[int] = frozenset()
    """Extra checkpoint steps (a trunk's fork steps, a stage's prefix step)."""

    def run(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        batches: Iterator[Any],
        *,
        step: int,
        device: torch.device,
        dtype: torch.dtype | None,
        window: list[float] | None = None,
    ) -> int:
        """Train from ``step`` to ``iterations``; returns the final step. ``window``: the
        open log window's losses of the checkpoint resumed from."""
        losses = LossWindow(window)
        model.train()
        while step < self.iterations:
            lr = self.lr_of(step)
            set_lr(optimizer, lr)
            if self.eval_interval and step and step % self.eval_interval == 0:
                losses.read()
                self.evaluate(step, lr)
            loss = accumulate(model, batches, self.accum_steps, self.loss_fn, scaler, device, dtype)
            norm = optimizer_step(model, optimizer, scaler, self.clip_grad)
            losses.add(step, loss, norm)
            step += 1
            if step % self.log_interval == 0 or step == self.iterations:
                if self.log_grad_norm is not None:
                    self.log_grad_norm(step, losses.grad_norm())
                self.log(step, losses.mean(), lr)
            self.after_step(step)
            regular = self.checkpoint_interval and step % self.checkpoint_interval == 0
            if (regular or step in self.save_at) and step < self.iterations:
                self.checkpoint(step, losses.state())
        losses.read()
        return step
