"""The ViT family: timm's ``VisionTransformer`` (class token, absolute position embedding).

Columnar: one stage of global attention on a (H/p)×(W/p) grid, so the stride of
the final features is the patch and their width the embedding width. The final
norm stays on every token (``fc_norm=False``: SimMIM reconstructs from the normed
patch tokens, and fine-tuning mean-pools those same tokens, so both phases share
one state-dict layout). Fine-tuning at another resolution resamples the position
embedding (bicubic on the token grid). Activation checkpointing regions: a block,
or for ``stage`` (a ViT has one) four near-equal runs of blocks. torch and timm are
imported inside the functions only.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from scaling.model.family import Family, Segment, chain, run_segments

STAGE_RUNS = 4
"""Checkpoint regions of a ViT under ``stage``: runs of about depth/4 blocks."""

if TYPE_CHECKING:
    from scaling.model.sizes import ModelSpec


def _build(spec: ModelSpec, **kw: Any) -> Any:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=kw["img_size"],
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depths[0],
        num_heads=spec.num_heads[0],
        qkv_bias=True,
        global_pool="avg",
        fc_norm=False,
        num_classes=kw["num_classes"],
        drop_path_rate=kw["drop_path_rate"],
    )


def _encoder_type() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def _embed(encoder: Any, images: Any) -> Any:
    return encoder.patch_embed(images)  # (B, 3, H, W) → (B, L, C), L = (H/p)·(W/p)


def _runs(encoder: Any) -> list[Segment]:
    blocks = list(encoder.blocks)
    k = min(STAGE_RUNS, len(blocks))
    bounds = [round(i * len(blocks) / k) for i in range(k + 1)]
    return [chain(blocks[a:b]) for a, b in itertools.pairwise(bounds)]


_SEGMENTS = {
    "none": lambda encoder: [encoder.blocks],
    "block": lambda encoder: list(encoder.blocks),
    "stage": _runs,
}


def _segments(encoder: Any, mode: str) -> list[Segment]:
    return _SEGMENTS[mode](encoder)


def _encode(encoder: Any, tokens: Any, checkpointing: str = "none") -> Any:
    if checkpointing == "none" and encoder.grad_checkpointing:  # timm's set_grad_checkpointing()
        checkpointing = "block"
    x = encoder._pos_embed(tokens)  # prepend the class token, add positions: (B, 1 + L, C)
    x = encoder.norm_pre(encoder.patch_drop(x))
    x = run_segments(_segments(encoder, checkpointing), x, checkpointing)
    x = encoder.norm(x)
    x = x[:, encoder.num_prefix_tokens :]  # (B, L, C)
    h, w = encoder.patch_embed.grid_size
    return x.transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w)


def _adapt_state(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """(1, prefix + h·w, C) → (1, prefix + h'·w', C): bicubic on the token grid."""
    if "pos_embed" in state:
        from timm.layers import resample_abs_pos_embed

        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
        )
    return state


FAMILY = Family(
    name="vit",
    stride=lambda spec: spec.patch_size,
    num_features=lambda spec: spec.embed_dim,
    check_image=lambda spec, img_size, window, key: None,  # global attention: any grid
    finetune_window=lambda spec, img_size, pretrain_img_size: 0,
    pretrained_windows=lambda spec, img_size: (0,) * len(spec.depths),
    build=_build,
    encoder_type=_encoder_type,
    embed=_embed,
    encode=_encode,
    segments=_segments,
    blocks=lambda encoder: list(encoder.blocks),
    adapt_state=_adapt_state,
)
