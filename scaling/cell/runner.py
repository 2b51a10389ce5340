"""One runner for both training phases of a cell: what they share is written once here.

:class:`PhaseRunner` does, in this order: return a finished phase from its result
checkpoint; check the batch split; seed and build the model (channels-last,
precision), the optimizer and the loss scaler; restore a resumable checkpoint
(model, optimizer, scaler, step, curves, RNG states); wrap in DDP and
torch.compile; build the training batches from the resumed step; run the loop
(:class:`scaling.train.loop.Phase`) with evaluation, logging, fault injection and
checkpoints (on several ranks DCP shards, written in the background unless
``resources.async_checkpoint`` is off: :mod:`scaling.cell.saving`); turn a non-finite
loss into a :class:`CellError`; evaluate once more at the end and write the result
checkpoint, after the last background save is named (or, when the phase fails, has
finished or been given up: nothing is left writing once the phase is over). A phase
(:mod:`scaling.cell.pretrain`, :mod:`scaling.cell.finetune`) states only what differs,
and gets its curve points back in :class:`PhaseOutput` rather than writing them into
shared state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scaling.cell.context import (
    CellError,
    TrialContext,
    maybe_inject_fault,
    maybe_inject_nan,
    seed_checkpoint,
)
from scaling.cell.saving import Shards, committed_slots
from scaling.cell.tracking import DATA_HINT, Throughput, WaitedBatches
from scaling.config.rules import micro_batch
from scaling.errors import UserError
from scaling.train.checkpoint import set_rng_state, unwrap
from scaling.train.loop import NonFiniteLoss, Phase, amp_dtype, distributed, make_scaler
from scaling.train.parallel import rank_seed, seed_rank, sharded, wrap
from scaling.train.shards import background_group, load_shards

Point = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass
class PhaseOutput:
    """A finished phase: its result fields, its curve points, and phase-specific state."""

    result: dict[str, Any]
    points: list[Point]
    state: dict[str, Any] = field(default_factory=dict)


class PhaseRunner:
    """The shared run of a training phase; subclasses fill in the phase's parts.

    Subclasses set the class attributes and implement the methods that raise
    NotImplementedError; ``self.model`` is the wrapped model while training.
    """

    phase: str = ""
    """``pretrain`` or ``finetune``: the curves' phase and the config section."""
    checkpoint_name: str = ""
    """File under the cell's directory."""
    fix_hint: str = ""
    """What to change after a non-finite loss."""
    data_hint: str = DATA_HINT
    """What to change when the loop waits on data (:class:`Throughput`'s warning)."""

    def __init__(self, ctx: TrialContext, seeds: dict[int, list[str]] | None = None) -> None:
        self.ctx, self.device = ctx, ctx.device
        self.seeds = dict(seeds or {})
        """step → store paths that get this run's resumable checkpoint at that step, when
        they have none (a trunk's branches at their fork step; this stage's prefix)."""
        self.points: list[Point] = []
        self.bad_images = 0
        self.model: nn.Module | None = None
        self.speed: dict[str, float] = {}
        """images/s, time to the last step, Unix time: at the latest log (for on_log)."""

    # -- what a phase states ----------------------------------------------------------------
    iterations: int
    batch_size: int
    accum_steps: int
    clip_grad: float
    log_interval: int
    eval_interval: int
    checkpoint_interval: int
    seed: int

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def train_batches(self, micro: int, start_micro_step: int) -> Any:
        """The training loader (it counts its bad images in ``num_bad_images``)."""
        raise NotImplementedError

    def lr_of(self, step: int) -> float:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, step: int, lr: float) -> None:
        """Evaluate the unwrapped model; add points with :meth:`add`."""
        raise NotImplementedError

    def on_log(self, step: int, loss: float, lr: float) -> None:
        """After the train loss point of ``step`` was added (progress for status)."""

    def finish(self, model: nn.Module, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The final evaluation: (result fields, extra state for the result checkpoint)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def add(self, step: int, split: str, metric: str, value: float, lr: float) -> None:
        self.points.append(self.ctx.point(self.phase, step, split, metric, value, lr))

    def progress(self, step: int, **fields: Any) -> None:
        """The stage's progress at ``step`` of this phase (progress.json, the driver's table)."""
        self.ctx.progress(phase=self.phase, step=step, iterations=self.iterations, **fields)

    @property
    def settings(self) -> Any:
        """The cell's pre-training recipe: precision, compile and memory format of both phases."""
        return self.ctx.cell.pretrain

    def run(self) -> PhaseOutput:
        ckpt = self.ctx.load(self.checkpoint_name)
        if ckpt is not None and "result" in ckpt:
            # cells written before the runner kept the encoder at the top level
            state = ckpt.get("state") or ({"encoder": ckpt["encoder"]} if "encoder" in ckpt else {})
            return PhaseOutput(ckpt["result"], ckpt["points"], state)
        try:
            micro = micro_batch(self.batch_size, self.accum_steps, self.ctx.world_size, self.phase)
        except UserError as err:
            raise CellError(str(err)) from None
        model, optimizer, scaler, step = self._prepare(ckpt)
        self.started, self.previous_wall = time.time(), (ckpt or {}).get("wall_s", 0.0)
        self.bad_images = (ckpt or {}).get("bad_images", 0)
        self.loader = self.train_batches(micro, step * self.accum_steps)
        self.order = self._check_order(ckpt)
        self.batches = WaitedBatches(self.loader)
        self.throughput = Throughput(
            self.batch_size, step, self.iterations, self.batches, hint=self.data_hint
        )
        try:
            step, result, state = self._train(model, optimizer, scaler, step, ckpt)
        except BaseException:
            # the checkpoint being written may still become the one to resume from; its
            # background writes end before the process group does
            self.ctx.settle()
            raise
        result = {**result, "bad_images": self.total_bad, "wall_s": self.wall_s}
        self.ctx.save(
            self.checkpoint_name,
            {"points": self.points, "step": step, "result": result, "state": state},
        )
        return PhaseOutput(result, self.points, state)

    def _train(
        self, model: nn.Module, optimizer: Any, scaler: Any, step: int, ckpt: dict | None
    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """The loop from ``step`` and the final evaluation: (last step, result, state)."""
        try:
            step = self._loop(model, optimizer, scaler).run(
                model,
                optimizer,
                scaler,
                self.batches,
                step=step,
                device=self.device,
                dtype=self.dtype,
                window=(ckpt or {}).get("window"),
            )
        except NonFiniteLoss as e:
            raise CellError(
                f"stage {self.ctx.stage_id}: non-finite {self._name} loss {e.value} at step "
                f"{e.step} (lr {self.lr_of(e.step):.3g}); {self.fix_hint}"
            ) from None
        return step, *self.finish(unwrap(model), step)

    def _check_order(self, ckpt: dict[str, Any] | None) -> str | None:
        """The digest of the training data's order (a pack's blocks: None for files); a
        checkpoint written under another order cannot resume exactly: CellError."""
        source = self.loader.dataset.source
        order = source.order_digest()
        before = (ckpt or {}).get("order")
        if before is not None and order is not None and before != order:
            raise CellError(
                f"stage {self.ctx.stage_id}: its checkpoint was written reading a pack with "
                f"other blocks than {source.location} (order {before[:12]}, now {order[:12]}): "
                "resuming would change its sample order. Give data.packed the pack it started "
                "with (a pack of the same manifests with the same --block-size/--block-rows; "
                f"--pixels or not), or run the stage again from the start (delete "
                f"{self.ctx.stage_dir} in the output)"
            )
        return order

    @property
    def _name(self) -> str:
        return {"pretrain": "pre-training", "finetune": "fine-tuning"}[self.phase]

    @property
    def total_bad(self) -> int:
        return self.bad_images + self.loader.num_bad_images

    @property
    def wall_s(self) -> float:
        return self.previous_wall + time.time() - self.started

    def _prepare(self, ckpt: dict[str, Any] | None) -> tuple[Any, Any, Any, int]:
        """Seeded model, optimizer and scaler, wrapped for its ranks, resumed from ``ckpt``.

        The initialisation draws from the cell's seed on every rank (the same weights);
        then each rank gets its own drop-path stream. On several ranks the model is
        wrapped (``resources.parallelism``: DDP or FSDP2) before the optimizer is built,
        since FSDP2 turns the parameters into DTensors in place.
        """
        from scaling.model.simmim import set_checkpointing, shard_units

        s, ctx = self.settings, self.ctx
        torch.manual_seed(self.seed)
        model = self.build_model().to(self.device)
        set_checkpointing(model, s.activation_checkpointing)
        maybe_inject_nan(model, ctx.rank)
        self.channels_last = self.device.type == "cuda" and s.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.dtype = amp_dtype(s.amp, self.device)
        self.unwrapped, wrapped = model, model
        if ctx.world_size > 1 and distributed():
            r = ctx.cell.resources
            wrapped = wrap(model, r.parallelism, shard_units(model))
            group = background_group() if r.async_checkpoint else None
            ctx.shards = Shards(wrapped, asynchronous=r.async_checkpoint, group=group)
        optimizer = self.build_optimizer(model)
        if ctx.shards is not None:
            ctx.shards.optimizer = optimizer
        scaler = make_scaler(self.device, self.dtype)
        step = 0
        if ckpt is None:
            seed_rank(self.seed, ctx.rank)
        else:
            step, self.points = ckpt["step"], ckpt["points"]
            scaler.load_state_dict(ckpt["scaler"])
            self._restore(ckpt, wrapped, optimizer, step)
        if s.compile:
            wrapped = torch.compile(wrapped)
        self.model = wrapped
        return wrapped, optimizer, scaler, step

    def _restore(self, ckpt: dict[str, Any], model: nn.Module, optimizer: Any, step: int) -> None:
        """Weights, optimizer and this rank's random streams from a checkpoint."""
        ctx = self.ctx
        if "shards" in ckpt:
            if ctx.shards is not None:
                rel = ctx.rel(self.checkpoint_name)
                ctx.shards.slots = committed_slots(ctx.store, rel, ckpt["shards"])
            streams = load_shards(
                ctx.store,
                ckpt["shards"],
                model,
                optimizer,
                rank=ctx.rank,
                world_size=ctx.world_size,
                device=self.device,
            )
        elif sharded(model):
            raise CellError(
                f"stage {ctx.stage_id}: its checkpoint was written by one rank; FSDP2 over "
                f"{ctx.world_size} ranks cannot load it (rerun with resources.parallelism = "
                '"ddp" until the next checkpoint, or start the stage afresh)'
            )
        else:
            unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            streams = ctx.world_size == 1
            if streams:
                set_rng_state(ckpt["rng"])
        if not streams:
            # the rank's drop-path stream is not in the checkpoint: derive it from
            # (seed, step, rank), which is exact only when nothing draws from it
            torch.manual_seed(rank_seed(self.seed * 1_000_003 + step, ctx.rank))
            log.warning(
                "stage %s resumes on %d rank(s) from a checkpoint of another rank count: "
                "weights and optimizer are exact, drop-path draws restart from (seed, step, "
                "rank), so the run equals an uninterrupted one only with drop_path = 0",
                ctx.stage_id,
                ctx.world_size,
            )

    def _loop(self, model: nn.Module, optimizer: Any, scaler: Any) -> Phase:
        grad_norm: list[float] = [math.nan]

        def keep_grad_norm(step: int, norm: float) -> None:
            grad_norm[0] = norm

        def log(step: int, loss: float, lr: float) -> None:
            self.add(step, "train", "loss", loss, lr)
            self.speed = {**self.throughput.tick(step), "wall_s": self.wall_s}
            if math.isfinite(grad_norm[0]):  # the trackers log it as train/grad_norm
                self.speed["grad_norm"] = grad_norm[0]
            self.on_log(step, loss, lr)

        def resumable(step: int, window: list[float]) -> None:
            state = {
                "points": self.points,
                "step": step,
                "window": window,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "bad_images": self.total_bad,
                "wall_s": self.wall_s,
                "order": self.order,
            }
            if self.checkpoint_interval and step % self.checkpoint_interval == 0:
                self.ctx.save(self.checkpoint_name, state)
            if step in self.seeds:
                seed_checkpoint(self.ctx, self.seeds[step], state)

        return Phase(
            iterations=self.iterations,
            lr_of=self.lr_of,
            loss_fn=self.loss,
            accum_steps=self.accum_steps,
            clip_grad=self.clip_grad,
            log_interval=self.log_interval,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
            evaluate=lambda s, lr: self.evaluate(unwrap(model), s, lr),
            log=log,
            checkpoint=resumable,
            after_step=lambda s: maybe_inject_fault(self.phase, s, self.ctx.stage_id),
            save_at=frozenset(self.seeds),
            log_grad_norm=keep_grad_norm,
        )
