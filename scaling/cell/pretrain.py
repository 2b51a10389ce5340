"""Pre-training of one cell by its MIM method: iteration-based, with a validation-loss curve.

What differs from fine-tuning (the rest is :class:`~scaling.cell.runner.PhaseRunner`):
the method's module around the registered encoder (SimMIM, MAE or LocalMIM, from
:mod:`scaling.model.methods`), AdamW with the no-decay set, the recipe's lr schedule
(multistep / cosine / WSD), the method's random masks, and the validation loss — the
method's loss with a fixed mask per image (seeded by its manifest key) and no random
crop, so losses compare across cells, models and reruns of one method.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scaling.cell.context import TrialContext
from scaling.cell.runner import PhaseOutput, PhaseRunner
from scaling.cell.tracking import DATA_HINT
from scaling.train.loop import autocast, distributed

log = logging.getLogger(__name__)


def manifest_info(path: Path) -> tuple[int, list[str]]:
    """(number of images, class list) of a manifest, from its Parquet footer only."""
    from subsets.manifest import read_manifest_info

    info = read_manifest_info(path)
    return info.num_images, list(info.classes)


def to_model_input(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and masks from the loader → normalized float images and masks on device."""
    from scaling.data.pretrain import normalize

    images, masks = batch
    masks = masks.to(device, non_blocking=True)
    return normalize(images, device, channels_last=channels_last), masks


def _mean_across_ranks(total: float, count: int, device: torch.device) -> float:
    if distributed():
        t = torch.tensor([total, float(count)], device=device, dtype=torch.float64)
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


@torch.no_grad()
def validation_loss(
    model: nn.Module, loader: Any, device: torch.device, dtype: torch.dtype | None
) -> float:
    """Mean loss of the method over the validation set (each image's fixed mask; every
    image has the same mask count, so the mean of batch means weighted by size is exact)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in loader:
        images, masks = to_model_input(batch, device)
        with autocast(device, dtype):
            loss = model(images, masks)
        total += loss.double() * len(images)  # stays on the device: no wait per batch
        count += len(images)
    model.train()
    return _mean_across_ranks(float(total), count, device)


class Pretrain(PhaseRunner):
    """SimMIM pre-training of ``ctx.cell``."""

    phase, checkpoint_name = "pretrain", "checkpoint.pt"
    fix_hint = "lower pretrain.base_lr or check the data"
    data_hint = f'{DATA_HINT}; pretrain.decode = "gpu" on a GPU'

    def __init__(self, ctx: TrialContext, seeds: dict[int, list[str]] | None = None) -> None:
        from scaling.model.methods import get_method
        from scaling.model.sizes import get_spec
        from scaling.train.schedule import scaled_lr

        super().__init__(ctx, seeds)
        cell, p = ctx.cell, ctx.cell.pretrain
        self.cell, self.p = cell, p
        self.iterations, self.batch_size, self.accum_steps = (
            cell.iterations,
            p.batch_size,
            p.accum_steps,
        )
        self.clip_grad, self.log_interval = p.clip_grad, p.log_interval
        self.eval_interval, self.checkpoint_interval = p.val_interval, p.checkpoint_interval
        self.seed = cell.seed
        self.peak = scaled_lr(p.base_lr, p.batch_size)
        self.val_loss = self.train_loss = float("nan")
        self.mask = get_method(cell.method).masks(get_spec(cell.model), cell.recipe, p.image_size)

    def build_model(self) -> nn.Module:
        from scaling.model.methods import build_method

        cell, p = self.cell, self.p
        return build_method(
            cell.method,
            cell.model,
            img_size=p.image_size,
            recipe=cell.recipe,
            drop_path_rate=p.drop_path,
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from scaling.train.optim import build_pretrain_optimizer

        p = self.p
        return build_pretrain_optimizer(
            model,
            lr=self.peak,
            weight_decay=p.weight_decay,
            betas=p.betas,
            fused=self.device.type == "cuda",
            decay_set=p.weight_decay_set,
        )

    def train_batches(self, micro: int, start_micro_step: int) -> Any:
        from scaling.data.pretrain import build_pretrain_loader, build_val_loader

        cell, p, data = self.cell, self.p, self.cell.data_config
        common = dict(
            root=data.root,
            image_size=p.image_size,
            mask=self.mask,
            batch_size=micro,
            num_workers=data.num_workers,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            packed=data.packed or None,
            decode=p.decode,
            device=self.device if p.decode == "gpu" else None,
        )
        loader = build_pretrain_loader(
            manifest=data.manifest(cell.data),
            seed=cell.seed,
            start_step=start_micro_step,
            crop_scale=p.crop_scale,
            max_bad_fraction=p.max_bad_fraction,
            shard_window=data.shard_window,
            **common,
        )
        self.val_loader = build_val_loader(
            manifest=data.manifest(data.val),
            limit=p.val_limit or None,
            max_bad_fraction=p.max_bad_fraction,
            **common,
        )
        return loader

    def lr_of(self, step: int) -> float:
        from scaling.train.schedule import lr_at, scaled_lr

        p, n = self.p, self.cell.iterations
        return lr_at(
            step,
            schedule=p.schedule,
            total_steps=n,
            warmup_steps=p.warmup_for(n),
            base_lr=self.peak,
            warmup_lr=scaled_lr(p.warmup_lr, p.batch_size),
            min_lr=scaled_lr(p.min_lr, p.batch_size),
            milestones=p.milestones,
            gamma=p.gamma,
            decay_fraction=p.decay_fraction,
        )

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, masks = to_model_input(batch, self.device, self.channels_last)
        return model(images, masks)

    def evaluate(self, model: nn.Module, step: int, lr: float) -> None:
        self.val_loss = validation_loss(model, self.val_loader, self.device, self.dtype)
        self.add(step, "val", "loss", self.val_loss, lr)
        self.val_step = step

    def on_log(self, step: int, loss: float, lr: float) -> None:
        self.train_loss = loss
        self.progress(
            step,
            train_loss=loss,
            val_loss=self.val_loss,
            val_step=getattr(self, "val_step", None),
            lr=lr,
            **self.speed,
        )

    def finish(self, model: nn.Module, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from scaling.model.build import count_params_m

        cell, p = self.cell, self.p
        self.evaluate(model, step, self.lr_of(step - 1))
        self.progress(step, train_loss=self.train_loss, val_loss=self.val_loss, val_step=step)
        flops = method_flops_per_image(cell)
        result = {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "n_train_images": manifest_info(cell.data_config.manifest(cell.data))[0],
            "params_m": count_params_m(cell.model, img_size=p.image_size),
            "flops": flops * p.batch_size * cell.iterations,
            # distinct unreadable validation images (the same ones at every evaluation)
            "bad_val_images": self.val_loader.num_bad_images,
        }
        encoder = {k: v.cpu() for k, v in model.encoder.state_dict().items()}
        return result, {"encoder": encoder}


def method_flops_per_image(cell: Any) -> float:
    """FLOPs of one image's forward + backward of the cell's method (SimMIM: cached)."""
    p = cell.pretrain
    if cell.method == "simmim":
        from scaling.model.flops import pretrain_flops_per_image

        return pretrain_flops_per_image(
            cell.model, img_size=p.image_size, mask_patch_size=p.mask_patch_size
        )
    from scaling.model.methods import flops_per_image

    return flops_per_image(cell.method, cell.model, img_size=p.image_size, recipe=cell.recipe)


def run_pretrain(ctx: TrialContext, seeds: dict[int, list[str]] | None = None) -> PhaseOutput:
    """Pre-train (or resume, or read back) the cell's encoder; ``state["encoder"]`` holds it.
    ``seeds``: checkpoints to write on the way (see :class:`PhaseRunner`)."""
    return Pretrain(ctx, seeds).run()
