"""Fine-tuning of a pre-trained encoder: a linear head, layer-wise lr decay, top-1/top-5.

The encoder moves to the fine-tuning resolution through timm (SwinV2 192→224
with window 12→14; ViT position embeddings resampled). Augmentation, Mixup /
CutMix and label smoothing are timm's own. Checkpoints and resume work as in
pre-training (``finetune.pt`` beside the cell's ``checkpoint.pt``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from scaling.checkpoint import set_rng_state, unwrap
from scaling.engine import NonFiniteLoss, Phase, amp_dtype, autocast, distributed, make_scaler
from scaling.pretrain import manifest_info

if TYPE_CHECKING:
    from scaling.trial import TrialContext

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    top1: float
    top5: float
    bad_images: int
    wall_s: float


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device, dtype: torch.dtype | None
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-k capped by the number of classes)."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.float().topk(k, dim=1).indices  # (B, k)
        hit = top.eq(labels[:, None])
        correct[0] += hit[:, 0].sum()
        correct[1] += hit.any(dim=1).sum()
        count += len(labels)
    if distributed():
        dist.all_reduce(correct)
        dist.all_reduce(count)
    model.train()
    top1, top5 = (100.0 * correct / count.clamp(min=1)).tolist()
    return top1, top5


def run_finetune(
    ctx: TrialContext, encoder_state: dict[str, torch.Tensor], *, val_loss: float = float("nan")
) -> FinetuneResult:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from scaling.finetune_data import build_finetune_loaders, build_mixup
    from scaling.models import create_classifier
    from scaling.optim import build_finetune_optimizer
    from scaling.schedule import lr_at, scaled_lr, warmup_steps_of
    from scaling.trial import TrialError, maybe_inject_fault

    cell, f, device = ctx.cell, ctx.cell.finetune, ctx.device
    ckpt = ctx.load("finetune.pt")
    if ckpt is not None and "result" in ckpt:
        ctx.points = ckpt["points"]
        return FinetuneResult(**ckpt["result"])

    data = cell.data_config
    n_images, classes = manifest_info(data.manifest(data.finetune_train))
    num_classes = len(classes)
    if num_classes < 2:
        raise TrialError(
            f"data.finetune_train: manifest {data.manifest(data.finetune_train)} lists "
            f"{num_classes} classes in its metadata; fine-tuning needs at least 2"
        )
    iterations = cell.finetune_iterations(n_images)
    micro, rem = divmod(f.batch_size, f.accum_steps * ctx.world_size)
    if rem:
        raise TrialError(
            f"finetune.batch_size: {f.batch_size} is not divisible by accum_steps × workers "
            f"= {f.accum_steps} × {ctx.world_size}"
        )
    torch.manual_seed(cell.seed + 1)  # the head's init and drop path
    model: nn.Module = create_classifier(
        cell.model,
        num_classes=num_classes,
        img_size=f.image_size,
        drop_path_rate=f.drop_path,
        encoder_state=encoder_state,
        pretrain_img_size=cell.pretrain.image_size,
    ).to(device)
    # precision, memory format and compilation follow the pre-training settings
    dtype = amp_dtype(cell.pretrain.amp, device)
    channels_last = device.type == "cuda" and cell.pretrain.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    peak = scaled_lr(f.base_lr, f.batch_size)
    optimizer = build_finetune_optimizer(
        model, lr=peak, weight_decay=f.weight_decay, layer_decay=f.layer_decay
    )
    scaler = make_scaler(device, dtype)
    step, previous_wall = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, previous_wall = ckpt["step"], ckpt["wall_s"]
        ctx.points = ckpt["points"]
        set_rng_state(ckpt["rng"])
    if ctx.world_size > 1 and distributed():
        model = nn.parallel.DistributedDataParallel(model)
    if cell.pretrain.compile:
        model = torch.compile(model)

    loaders = build_finetune_loaders(
        train_manifest=data.manifest(data.finetune_train),
        val_manifest=data.manifest(data.finetune_val),
        root=data.root,
        image_size=f.image_size,
        batch_size=micro,
        seed=cell.seed,
        start_step=step * f.accum_steps,
        num_workers=data.num_workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
        auto_augment=f.auto_augment or None,
        re_prob=f.re_prob,
    )
    train_loader, val_loader = loaders.train, loaders.val
    mixup = build_mixup(
        mixup=f.mixup,
        cutmix=f.cutmix,
        label_smoothing=f.label_smoothing,
        num_classes=num_classes,
        seed=cell.seed,
        rank=ctx.rank,
    )
    if mixup is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif f.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=f.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    def lr_of(s: int) -> float:
        return lr_at(
            s,
            schedule="cosine",
            total_steps=iterations,
            warmup_steps=warmup_steps_of(f.warmup_fraction, iterations),
            base_lr=peak,
            warmup_lr=scaled_lr(f.warmup_lr, f.batch_size),
            min_lr=scaled_lr(f.min_lr, f.batch_size),
        )

    micro_step = [step * f.accum_steps]  # seeds Mixup/CutMix: resume draws the same mixes

    def classification_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        images = batch[0].to(device, non_blocking=True)
        labels = batch[1].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, labels = mixup(images, labels, step=micro_step[0])
        micro_step[0] += 1
        return criterion(m(images), labels)

    started = time.time()

    def evaluate_top(s: int, lr: float) -> None:
        top1, top5 = evaluate(unwrap(model), val_loader, device, dtype)
        ctx.log_point("finetune", s, "val", "top1", top1, lr)
        ctx.log_point("finetune", s, "val", "top5", top5, lr)

    def log_train(s: int, loss: float, lr: float) -> None:
        ctx.log_point("finetune", s, "train", "loss", loss, lr)
        ctx.progress(phase="finetune", step=s, iterations=iterations, lr=lr, val_loss=val_loss)

    def resumable(s: int) -> None:
        ctx.save(
            "finetune.pt",
            {
                "points": ctx.points,
                "step": s,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "wall_s": previous_wall + time.time() - started,
            },
        )

    phase = Phase(
        iterations=iterations,
        lr_of=lr_of,
        loss_fn=classification_loss,
        accum_steps=f.accum_steps,
        clip_grad=f.clip_grad,
        log_interval=cell.pretrain.log_interval,
        eval_interval=f.eval_interval,
        checkpoint_interval=cell.pretrain.checkpoint_interval,
        evaluate=evaluate_top,
        log=log_train,
        checkpoint=resumable,
        after_step=lambda s: maybe_inject_fault("finetune", s),
    )
    try:
        step = phase.run(
            model, optimizer, scaler, iter(train_loader), step=step, device=device, dtype=dtype
        )
    except NonFiniteLoss as e:
        raise TrialError(
            f"cell {ctx.cell_id}: non-finite fine-tuning loss {e.value} at step {e.step} "
            f"(lr {lr_of(e.step):.3g}); lower finetune.base_lr"
        ) from None

    top1, top5 = evaluate(unwrap(model), val_loader, device, dtype)
    ctx.log_point("finetune", step, "val", "top1", top1, lr_of(step - 1))
    ctx.log_point("finetune", step, "val", "top5", top5, lr_of(step - 1))
    result = {
        "top1": top1,
        "top5": top5,
        "bad_images": train_loader.num_bad_images,
        "wall_s": previous_wall + time.time() - started,
    }
    ctx.save("finetune.pt", {"points": ctx.points, "step": step, "result": result})
    return FinetuneResult(**result)
