"""SimMIM pre-training of one cell: iteration-based, with a validation-loss curve.

The loop body runs in one fixed order — lr → eval → forward/backward → clip →
step → log → checkpoint → stop — so reading it top to bottom is reading what
happens. Validation uses a fixed mask per image (seeded by its manifest key)
and no random crop, so losses compare across cells, models and reruns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from scaling.checkpoint import set_rng_state, unwrap
from scaling.engine import NonFiniteLoss, Phase, amp_dtype, autocast, distributed, make_scaler

if TYPE_CHECKING:
    from scaling.trial import TrialContext

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    train_loss: float
    val_loss: float
    n_train_images: int
    params_m: float
    flops: float
    bad_images: int
    wall_s: float
    encoder_state: dict[str, torch.Tensor]


def manifest_info(path: Path) -> tuple[int, list[str]]:
    """(number of images, class list) of a manifest, from its Parquet footer only."""
    from subsets.manifest import read_manifest_info

    info = read_manifest_info(path)
    return info.num_images, list(info.classes)


def to_model_input(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and masks from the loader → normalized float images and masks on device."""
    from scaling.data import normalize

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
    """Mean masked-L1 loss over the validation set (every image has the same mask count)."""
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


def run_pretrain(ctx: TrialContext) -> PretrainResult:
    from scaling.data import build_pretrain_loader, build_val_loader
    from scaling.flops import pretrain_flops_per_image
    from scaling.masking import MaskGenerator
    from scaling.models import count_params_m, get_spec
    from scaling.optim import build_pretrain_optimizer
    from scaling.schedule import lr_at, scaled_lr, warmup_steps_of
    from scaling.simmim import build_simmim
    from scaling.trial import TrialError, maybe_inject_fault

    cell, p, device = ctx.cell, ctx.cell.pretrain, ctx.device
    ckpt = ctx.load("checkpoint.pt")
    if ckpt is not None and "result" in ckpt:
        ctx.points = ckpt["points"]
        return PretrainResult(**ckpt["result"], encoder_state=ckpt["encoder"])

    n_train, _ = manifest_info(cell.data_config.manifest(cell.data))
    spec = get_spec(cell.model)
    micro, rem = divmod(p.batch_size, p.accum_steps * ctx.world_size)
    if rem:
        raise TrialError(
            f"pretrain.batch_size: {p.batch_size} is not divisible by accum_steps × workers "
            f"= {p.accum_steps} × {ctx.world_size}"
        )
    torch.manual_seed(cell.seed)  # the init, then drop path: a pure function of the seed
    model: nn.Module = build_simmim(
        cell.model,
        img_size=p.image_size,
        drop_path_rate=p.drop_path,
        norm_target=p.norm_target,
        norm_target_window=p.norm_target_window,
    ).to(device)
    channels_last = device.type == "cuda" and p.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(p.amp, device)
    peak = scaled_lr(p.base_lr, p.batch_size)
    optimizer = build_pretrain_optimizer(
        model, lr=peak, weight_decay=p.weight_decay, betas=p.betas, fused=device.type == "cuda"
    )
    scaler = make_scaler(device, dtype)

    step, bad, previous_wall = 0, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, bad, previous_wall = ckpt["step"], ckpt["bad_images"], ckpt["wall_s"]
        ctx.points = ckpt["points"]
        set_rng_state(ckpt["rng"])
    if ctx.world_size > 1 and distributed():
        model = nn.parallel.DistributedDataParallel(model)
    if p.compile:
        model = torch.compile(model)

    mask = MaskGenerator(
        input_size=p.image_size,
        mask_patch_size=p.mask_patch_size,
        model_patch_size=spec.patch_size,
        mask_ratio=p.mask_ratio,
    )
    root = cell.data_config.root
    loader = build_pretrain_loader(
        manifest=cell.data_config.manifest(cell.data),
        root=root,
        image_size=p.image_size,
        mask=mask,
        batch_size=micro,
        seed=cell.seed,
        start_step=step * p.accum_steps,
        num_workers=cell.data_config.num_workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
        crop_scale=p.crop_scale,
        max_bad_fraction=p.max_bad_fraction,
    )
    val_loader = build_val_loader(
        manifest=cell.data_config.manifest(cell.data_config.val),
        root=root,
        image_size=p.image_size,
        mask=mask,
        batch_size=micro,
        num_workers=cell.data_config.num_workers,
        limit=p.val_limit or None,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )

    def lr_of(s: int) -> float:
        return lr_at(
            s,
            schedule=p.schedule,
            total_steps=cell.iterations,
            warmup_steps=warmup_steps_of(p.warmup_fraction, cell.iterations),
            base_lr=peak,
            warmup_lr=scaled_lr(p.warmup_lr, p.batch_size),
            min_lr=scaled_lr(p.min_lr, p.batch_size),
            milestones=p.milestones,
            gamma=p.gamma,
            decay_fraction=p.decay_fraction,
        )

    def simmim_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        images, masks = to_model_input(batch, device, channels_last)
        return m(images, masks)

    started = time.time()
    val_loss = train_loss = float("nan")

    def evaluate(s: int, lr: float) -> None:
        nonlocal val_loss
        val_loss = validation_loss(unwrap(model), val_loader, device, dtype)
        ctx.log_point("pretrain", s, "val", "loss", val_loss, lr)

    def log_train(s: int, loss: float, lr: float) -> None:
        nonlocal train_loss
        train_loss = loss
        ctx.log_point("pretrain", s, "train", "loss", loss, lr)
        ctx.progress(
            phase="pretrain",
            step=s,
            iterations=cell.iterations,
            train_loss=loss,
            val_loss=val_loss,
            lr=lr,
        )

    def checkpoint(s: int, extra: dict[str, Any]) -> None:
        ctx.save("checkpoint.pt", {"points": ctx.points, "step": s, **extra})

    def resumable(s: int) -> None:
        checkpoint(
            s,
            {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "bad_images": bad + loader.num_bad_images,
                "wall_s": previous_wall + time.time() - started,
            },
        )

    phase = Phase(
        iterations=cell.iterations,
        lr_of=lr_of,
        loss_fn=simmim_loss,
        accum_steps=p.accum_steps,
        clip_grad=p.clip_grad,
        log_interval=p.log_interval,
        eval_interval=p.val_interval,
        checkpoint_interval=p.checkpoint_interval,
        evaluate=evaluate,
        log=log_train,
        checkpoint=resumable,
        after_step=lambda s: maybe_inject_fault("pretrain", s),
    )
    try:
        step = phase.run(
            model, optimizer, scaler, iter(loader), step=step, device=device, dtype=dtype
        )
    except NonFiniteLoss as e:
        raise TrialError(
            f"cell {ctx.cell_id}: non-finite pre-training loss {e.value} at step {e.step} "
            f"(lr {lr_of(e.step):.3g}); lower pretrain.base_lr or check the data"
        ) from None

    val_loss = validation_loss(unwrap(model), val_loader, device, dtype)
    ctx.log_point("pretrain", step, "val", "loss", val_loss, lr_of(step - 1))
    ctx.progress(
        phase="pretrain",
        step=step,
        iterations=cell.iterations,
        train_loss=train_loss,
        val_loss=val_loss,
    )
    flops = pretrain_flops_per_image(
        cell.model, img_size=p.image_size, mask_patch_size=p.mask_patch_size
    )
    result = {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "n_train_images": n_train,
        "params_m": count_params_m(cell.model, img_size=p.image_size),
        "flops": flops * p.batch_size * cell.iterations,
        "bad_images": bad + loader.num_bad_images,
        "wall_s": previous_wall + time.time() - started,
    }
    encoder_state = {k: v.cpu() for k, v in unwrap(model).encoder.state_dict().items()}
    checkpoint(step, {"result": result, "encoder": encoder_state})
    return PretrainResult(**result, encoder_state=encoder_state)
