"""AdamW for pre-training (weight-decay groups) and fine-tuning (layer-wise lr decay).

Parameter groups carry an ``lr_scale``; the training loop sets every group's
learning rate to lr × lr_scale (the convention of timm's schedulers), so one
schedule drives both optimizers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.optim import create_optimizer_v2
from torch import nn

# Parameters that are never decayed, by name component. The released SimMIM
# code intends the same: it skips 1-D tensors, ".bias", the encoder's
# no_weight_decay() names and its no_weight_decay_keywords(), which for SwinV2
# are "cpb_mlp", "logit_scale" and "relative_position_bias_table". But the
# SimMIM wrapper prefixes every keyword with "encoder.", and a substring test
# for "encoder.cpb_mlp" never matches "encoder.layers.0.blocks.0.attn.cpb_mlp.0.weight",
# so the 2-D cpb MLP weights and the 3-D (heads, 1, 1) logit scales are decayed
# there. Matching name components here exempts them as intended.
NO_DECAY_NAMES = frozenset(
    {"mask_token", "logit_scale", "cpb_mlp", "pos_embed", "absolute_pos_embed", "cls_token"}
)
RELEASED_NO_DECAY_NAMES = frozenset({"mask_token", "pos_embed", "absolute_pos_embed", "cls_token"})
"""What the released code's matching actually exempts besides 1-D tensors: the exact names
(mask token, position embeddings, class token), not the keyword ones (cpb MLP, logit scale)."""
NO_DECAY_SETS = {"corrected": NO_DECAY_NAMES, "released": RELEASED_NO_DECAY_NAMES}


def is_no_decay(name: str, param: torch.Tensor, names: frozenset[str] = NO_DECAY_NAMES) -> bool:
    """Biases, norm weights and other 1-D tensors, plus the parameters named in ``names``."""
    return param.ndim <= 1 or not names.isdisjoint(name.split("."))


def no_decay_names(model: nn.Module, decay_set: str = "corrected") -> set[str]:
    """Names of the trainable parameters that pre-training does not decay."""
    names = NO_DECAY_SETS[decay_set]
    return {n for n, p in model.named_parameters() if p.requires_grad and is_no_decay(n, p, names)}


def _use_fused(params: Iterable[torch.Tensor], fused: bool | None) -> bool:
    if fused is not None:
        return fused
    return all(p.is_cuda for p in params)


def build_pretrain_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
    decay_set: str = "corrected",
) -> torch.optim.AdamW:
    """AdamW with two groups, ``decay`` and ``no_decay``; fused kernels on CUDA by default.
    ``decay_set``: ``corrected`` or ``released`` (see :data:`RELEASED_NO_DECAY_NAMES`)."""
    names = NO_DECAY_SETS[decay_set]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param, names) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0, "group_name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0, "group_name": "no_decay"},
    ]
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, fused=_use_fused(decay + no_decay, fused) or None
    )


def build_finetune_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay from timm's factory.

    timm groups the layers with the model's ``group_matcher`` (SwinV2: patch
    embedding, then every block, its downsampling with the first block of the
    next stage, the final norm; ViT: embeddings, every block, the norm) and
    scales layer i of n by ``layer_decay ** (n - 1 - i)``; the head gets 1. No
    weight decay on 1-D tensors and the model's ``no_weight_decay()`` names
    (SwinV2: cpb_mlp and logit_scale; ViT: pos_embed and cls_token).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if _use_fused(params, fused) else {}
    optimizer = create_optimizer_v2(
        model,
        opt="adamw",
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        betas=betas,
        **extra,
    )
    for group in optimizer.param_groups:  # timm's schedulers apply lr_scale; do it up front
        group["lr"] = lr * group["lr_scale"]
    return optimizer
