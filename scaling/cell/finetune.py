"""Fine-tuning of a pre-trained encoder: a linear head, layer-wise lr decay, top-1/top-5.

What differs from pre-training (the rest is :class:`~scaling.cell.runner.PhaseRunner`):
the classifier at the fine-tuning resolution, initialised from the encoder (the
family adapts it: SwinV2 192→224 with window 12→14, ViT position embeddings
resampled); AdamW with layer decay; a cosine schedule over ``finetune.epochs``;
timm's augmentation, Mixup/CutMix and label smoothing; top-1/top-5 evaluation.
Checkpoints go to ``finetune.pt`` beside the cell's ``checkpoint.pt``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scaling.cell.context import CellError, TrialContext
from scaling.cell.pretrain import manifest_info
from scaling.cell.runner import PhaseOutput, PhaseRunner
from scaling.train.loop import autocast, distributed

log = logging.getLogger(__name__)


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


class Finetune(PhaseRunner):
    """Fine-tuning of ``ctx.cell``'s pre-trained encoder on ``data.finetune_train``."""

    phase, checkpoint_name = "finetune", "finetune.pt"
    fix_hint = "lower finetune.base_lr"

    def __init__(
        self, ctx: TrialContext, encoder_state: dict[str, torch.Tensor], val_loss: float
    ) -> None:
        from scaling.train.schedule import scaled_lr

        super().__init__(ctx)
        cell, f, data = ctx.cell, ctx.cell.finetune, ctx.cell.data_config
        self.cell, self.f, self.encoder_state, self.val_loss = cell, f, encoder_state, val_loss
        n_images, classes = manifest_info(data.manifest(data.finetune_train))
        self.num_classes = len(classes)
        if self.num_classes < 2:
            raise CellError(
                f"data.finetune_train: manifest {data.manifest(data.finetune_train)} lists "
                f"{self.num_classes} classes in its metadata; fine-tuning needs at least 2"
            )
        self.iterations = cell.finetune_iterations(n_images)
        self.batch_size, self.accum_steps, self.clip_grad = f.batch_size, f.accum_steps, f.clip_grad
        self.log_interval = cell.pretrain.log_interval
        self.eval_interval, self.checkpoint_interval = (
            f.eval_interval,
            cell.pretrain.checkpoint_interval,
        )
        self.seed = cell.seed + 1  # the head's init and drop path
        self.peak = scaled_lr(f.base_lr, f.batch_size)

    def build_model(self) -> nn.Module:
        from scaling.model.build import create_classifier

        return create_classifier(
            self.cell.model,
            num_classes=self.num_classes,
            img_size=self.f.image_size,
            drop_path_rate=self.f.drop_path,
            encoder_state=self.encoder_state,
            pretrain_img_size=self.cell.pretrain.image_size,
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from scaling.train.optim import build_finetune_optimizer

        f = self.f
        return build_finetune_optimizer(
            model, lr=self.peak, weight_decay=f.weight_decay, layer_decay=f.layer_decay
        )

    def train_batches(self, micro: int, start_micro_step: int) -> Any:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        from scaling.data.finetune import build_finetune_loaders, build_mixup

        cell, f, data = self.cell, self.f, self.cell.data_config
        loaders = build_finetune_loaders(
            train_manifest=data.manifest(data.finetune_train),
            val_manifest=data.manifest(data.finetune_val),
            root=data.root,
            image_size=f.image_size,
            batch_size=micro,
            seed=cell.seed,
            start_step=start_micro_step,
            num_workers=data.num_workers,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            auto_augment=f.auto_augment or None,
            re_prob=f.re_prob,
            packed=data.packed or None,
            shard_window=data.shard_window,
        )
        self.val_loader = loaders.val
        self.mixup = build_mixup(
            mixup=f.mixup,
            cutmix=f.cutmix,
            label_smoothing=f.label_smoothing,
            num_classes=self.num_classes,
            seed=cell.seed,
            rank=self.ctx.rank,
        )
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif f.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=f.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.micro_step = start_micro_step  # seeds Mixup/CutMix: resume draws the same mixes
        return loaders.train

    def lr_of(self, step: int) -> float:
        from scaling.train.schedule import lr_at, scaled_lr, warmup_steps_of

        f, n = self.f, self.iterations
        return lr_at(
            step,
            schedule="cosine",
            total_steps=n,
            warmup_steps=warmup_steps_of(f.warmup_fraction, n),
            base_lr=self.peak,
            warmup_lr=scaled_lr(f.warmup_lr, f.batch_size),
            min_lr=scaled_lr(f.min_lr, f.batch_size),
        )

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels, step=self.micro_step)
        self.micro_step += 1
        return self.criterion(model(images), labels)

    def evaluate(self, model: nn.Module, step: int, lr: float) -> None:
        self.top1, self.top5 = evaluate(model, self.val_loader, self.device, self.dtype)
        self.add(step, "val", "top1", self.top1, lr)
        self.add(step, "val", "top5", self.top5, lr)
        self.val_step = step

    def on_log(self, step: int, loss: float, lr: float) -> None:
        self.progress(
            step,
            lr=lr,
            val_loss=self.val_loss,
            train_loss=loss,
            finetune_top1=getattr(self, "top1", None),
            finetune_top5=getattr(self, "top5", None),
            val_step=getattr(self, "val_step", None),
            **self.speed,
        )

    def finish(self, model: nn.Module, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        self.evaluate(model, step, self.lr_of(step - 1))
        self.progress(
            step,
            finetune_top1=self.top1,
            finetune_top5=self.top5,
            val_step=step,
        )
        classifier = {k: v.cpu() for k, v in model.state_dict().items()}  # for export
        return {"top1": self.top1, "top5": self.top5}, {"classifier": classifier}


def run_finetune(
    ctx: TrialContext, encoder_state: dict[str, torch.Tensor], *, val_loss: float = float("nan")
) -> PhaseOutput:
    """Fine-tune (or resume, or read back) the cell's classifier; ``result`` has top1/top5."""
    return Finetune(ctx, encoder_state, val_loss).run()
