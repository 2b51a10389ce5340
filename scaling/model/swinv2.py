"""The SwinV2 family: timm's ``SwinTransformerV2`` (not ``swinv2_cr``), as in the paper.

Hierarchical: patch ``p``, then a 2× patch merging per stage, so the stride of the
final features is ``p · 2^(stages − 1)`` and their width ``embed_dim · 2^(stages − 1)``.
Every stage attends within ``window × window`` token windows; timm shrinks a window
larger than its stage's grid to the grid, and a grid larger than the window must
tile into whole windows (timm would pad silently, so that is refused here).
Fine-tuning at a larger image grows the window with it (192/12 → 224/14) and sets
``pretrained_window_sizes`` to pre-training's windows, so the log-spaced continuous
position bias MLP transfers (the released 192 → 224 config). Activation
checkpointing regions: a block (the patch merging rides with its stage's first
block) or a whole stage. torch and timm are imported inside the functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scaling.errors import ModelError
from scaling.model.family import Family, Segment, chain, run_segments

if TYPE_CHECKING:
    from scaling.model.sizes import ModelSpec

HEAD_DIM = 32
"""Channels per attention head of every SwinV2 size (num_heads = width / 32)."""


def heads(embed_dim: int, stages: int) -> tuple[int, ...]:
    """Heads per stage: width / 32, the width doubling every stage."""
    return tuple(max(1, embed_dim * 2**i // HEAD_DIM) for i in range(stages))


def _stride(spec: ModelSpec) -> int:
    return spec.patch_size * 2 ** (len(spec.depths) - 1)


def _num_features(spec: ModelSpec) -> int:
    return spec.embed_dim * 2 ** (len(spec.depths) - 1)


def _check_image(spec: ModelSpec, img_size: int, window: int, key: str) -> None:
    p, stride = spec.patch_size, _stride(spec)
    if img_size % stride:
        raise ModelError(
            f"{key}: {img_size} is not divisible by {spec.name}'s encoder stride {stride} "
            f"(patch {p} × 2^{len(spec.depths) - 1} patch mergings)"
        )
    for stage in range(len(spec.depths)):
        grid = img_size // (p * 2**stage)
        if grid > window and grid % window:
            factors = f"{window}×{p}" + (f"×{2**stage}" if stage else "")
            raise ModelError(
                f"{key}: {img_size} is not divisible by {spec.name}'s window×patch"
                f"{'×2^' + str(stage) if stage else ''} {factors}={window * p * 2**stage} "
                f"(stage {stage} has a {grid}×{grid} token grid and {window}×{window} windows)"
            )


def _finetune_window(spec: ModelSpec, img_size: int, pretrain_img_size: int) -> int:
    """The window that keeps the window-to-image ratio of pre-training (192/12 → 224/14)."""
    scaled, rest = divmod(spec.window_size * img_size, pretrain_img_size)
    if rest:
        raise ModelError(
            f"finetune.image_size: {img_size} does not scale {spec.name}'s window "
            f"{spec.window_size} at pretrain.image_size {pretrain_img_size} to a whole window"
        )
    return scaled


def _pretrained_windows(spec: ModelSpec, img_size: int) -> tuple[int, ...]:
    """Per-stage windows as timm uses them: a window never exceeds its stage's grid."""
    return tuple(
        min(spec.window_size, img_size // (spec.patch_size * 2**stage))
        for stage in range(len(spec.depths))
    )


def _build(spec: ModelSpec, **kw: Any) -> Any:
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    return SwinTransformerV2(
        img_size=kw["img_size"],
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depths=spec.depths,
        num_heads=spec.num_heads,
        window_size=kw["window_size"] or spec.window_size,
        pretrained_window_sizes=kw["pretrained_window_sizes"],
        num_classes=kw["num_classes"],
        drop_path_rate=kw["drop_path_rate"],
    )


def _encoder_type() -> type:
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    return SwinTransformerV2


def _embed(encoder: Any, images: Any) -> Any:
    return encoder.patch_embed(images)  # (B, 3, H, W) → (B, H/p, W/p, C), NHWC in timm 1.x


def _blocks(encoder: Any) -> list[Segment]:
    """One region per block; a stage's patch merging runs in its first block's region."""
    segments: list[Segment] = []
    for stage in encoder.layers:
        first, *rest = stage.blocks
        segments += [chain([stage.downsample, first]), *rest]
    return segments


_SEGMENTS = {
    "none": lambda encoder: [encoder.layers],  # timm's own set_grad_checkpointing still applies
    "block": _blocks,
    "stage": lambda encoder: list(encoder.layers),  # downsample + blocks of each stage
}


def _segments(encoder: Any, mode: str) -> list[Segment]:
    return _SEGMENTS[mode](encoder)


def _encode(encoder: Any, tokens: Any, checkpointing: str = "none") -> Any:
    # (B, H/p, W/p, C) → stages → (B, H/s, W/s, C')
    x = encoder.norm(run_segments(_segments(encoder, checkpointing), tokens, checkpointing))
    return x.permute(0, 3, 1, 2)  # (B, C', H/s, W/s), channels-last in memory


FAMILY = Family(
    name="swinv2",
    stride=_stride,
    num_features=_num_features,
    check_image=_check_image,
    finetune_window=_finetune_window,
    pretrained_windows=_pretrained_windows,
    build=_build,
    encoder_type=_encoder_type,
    embed=_embed,
    encode=_encode,
    segments=_segments,
    blocks=lambda encoder: [block for stage in encoder.layers for block in stage.blocks],
)
