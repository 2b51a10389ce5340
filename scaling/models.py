"""Model sizes: a registry of SwinV2 and ViT encoders, all built from timm.

The paper's SwinV2 family (Xie et al., "On Data Scaling in Masked Image
Modeling") uses timm's ``SwinTransformerV2`` (not ``swinv2_cr``) at 192 px,
window 12, patch 4, depths 2-2-18-2 and 32 channels per head; only the width
changes from S to G. Their backbone parameter counts (no classifier) are the
paper's 49.0M / 86.9M / 195.2M / 655.2M / 1061.0M; ``count_params_m`` counts
them on the meta device, so even swinv2-g costs no memory. ViT encoders
(timm's ``VisionTransformer``, encoder stride = patch 16) are a second family,
and the ``*-nano`` / ``*-micro`` flavours are small enough for a CPU.

``create_encoder`` builds the headless encoder that SimMIM pre-trains;
``create_classifier`` builds the fine-tuning model at a possibly larger
resolution and loads the pre-trained encoder into it (SwinV2: the window grows
with the image, e.g. 12 → 14 for 192 → 224, and the log-spaced continuous
position bias MLP transfers; ViT: the absolute position embedding is resampled).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from scaling.errors import ModelError

SWIN_HEAD_DIM = 32
"""Channels per attention head of every SwinV2 size (num_heads = width / 32)."""

# Non-persistent buffers that depend on the window and the image size; timm
# recomputes them at construction, so stale copies in a checkpoint are dropped.
_SIZE_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One registered encoder size."""

    name: str
    """Registry name, e.g. ``swinv2-b``."""
    family: str
    """``swinv2`` or ``vit``: which timm class builds it."""
    embed_dim: int
    """Channels of the first stage (SwinV2 doubles them at every stage)."""
    depths: tuple[int, ...]
    """Blocks per stage (a ViT has one stage)."""
    num_heads: tuple[int, ...]
    """Attention heads per stage."""
    patch_size: int
    """Side of one token in pixels (the patch embedding's stride)."""
    window_size: int = 0
    """Attention window in tokens (SwinV2); 0 for global attention (ViT)."""
    img_size: int
    """Default pre-training image side in pixels."""
    params_m: float | None = None
    """Reference backbone parameter count in millions (the paper's), if any."""
    tiny: bool = False
    """A CPU flavour for the quickstart and the tests."""

    def __post_init__(self) -> None:
        if self.family not in _BUILDERS:
            raise ModelError(f"family: unknown {self.family!r}; valid: {', '.join(_BUILDERS)}")
        if len(self.depths) != len(self.num_heads):
            raise ModelError(f"{self.name}: depths and num_heads differ in length")

    @property
    def encoder_stride(self) -> int:
        """Pixels per feature of the last stage (the SimMIM decoder's PixelShuffle factor)."""
        if self.family == "swinv2":
            return self.patch_size * 2 ** (len(self.depths) - 1)
        return self.patch_size

    @property
    def num_features(self) -> int:
        """Channels of the encoder's final features."""
        if self.family == "swinv2":
            return self.embed_dim * 2 ** (len(self.depths) - 1)
        return self.embed_dim


def _swinv2(
    name: str,
    embed_dim: int,
    *,
    depths: tuple[int, ...] = (2, 2, 18, 2),
    window_size: int = 12,
    patch_size: int = 4,
    img_size: int = 192,
    params_m: float | None = None,
    tiny: bool = False,
) -> ModelSpec:
    heads = tuple(max(1, embed_dim * 2**i // SWIN_HEAD_DIM) for i in range(len(depths)))
    return ModelSpec(
        name=name,
        family="swinv2",
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        patch_size=patch_size,
        window_size=window_size,
        img_size=img_size,
        params_m=params_m,
        tiny=tiny,
    )


def _vit(
    name: str,
    embed_dim: int,
    depth: int,
    num_heads: int,
    *,
    patch_size: int = 16,
    img_size: int = 224,
    params_m: float | None = None,
    tiny: bool = False,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="vit",
        embed_dim=embed_dim,
        depths=(depth,),
        num_heads=(num_heads,),
        patch_size=patch_size,
        img_size=img_size,
        params_m=params_m,
        tiny=tiny,
    )


def _build_swinv2(
    spec: ModelSpec,
    *,
    img_size: int,
    window_size: int,
    pretrained_window_sizes: tuple[int, ...],
    num_classes: int,
    drop_path_rate: float,
) -> nn.Module:
    return SwinTransformerV2(
        img_size=img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depths=spec.depths,
        num_heads=spec.num_heads,
        window_size=window_size,
        pretrained_window_sizes=pretrained_window_sizes,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
    )


def _build_vit(
    spec: ModelSpec,
    *,
    img_size: int,
    window_size: int,
    pretrained_window_sizes: tuple[int, ...],
    num_classes: int,
    drop_path_rate: float,
) -> nn.Module:
    del window_size, pretrained_window_sizes  # global attention
    # fc_norm=False keeps the final norm on every token (SimMIM reconstructs from
    # the normed patch tokens) and lets fine-tuning mean-pool those same tokens,
    # so pre-training and fine-tuning share one state-dict layout.
    return VisionTransformer(
        img_size=img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depths[0],
        num_heads=spec.num_heads[0],
        qkv_bias=True,
        global_pool="avg",
        fc_norm=False,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
    )


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"swinv2": _build_swinv2, "vit": _build_vit}

MODEL_SIZES: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # CPU flavours: a 64 px image is a 16×16 token grid; one SimMIM step at
        # batch 32 takes well under a second on two cores (bench/bench_step.py).
        _swinv2("swinv2-nano", 32, depths=(1, 1, 2, 1), window_size=4, img_size=64, tiny=True),
        _swinv2("swinv2-micro", 64, depths=(2, 2, 6, 2), window_size=8, img_size=64, tiny=True),
        _vit("vit-nano", 96, 4, 3, patch_size=8, img_size=64, tiny=True),
        # The paper's SwinV2 family.
        _swinv2("swinv2-s", 96, params_m=49.0),
        _swinv2("swinv2-b", 128, params_m=86.9),
        _swinv2("swinv2-l", 192, params_m=195.2),
        _swinv2("swinv2-h", 352, params_m=655.2),
        _swinv2("swinv2-g", 448, params_m=1061.0),
        # ViT/16 (timm's layout: class token, absolute position embedding).
        _vit("vit-s", 384, 12, 6, params_m=21.7),
        _vit("vit-b", 768, 12, 12, params_m=85.8),
        _vit("vit-l", 1024, 24, 16, params_m=303.3),
    )
}


def get_spec(name: str, *, key: str = "model") -> ModelSpec:
    """The registered size ``name``; an unknown name lists the valid ones."""
    try:
        return MODEL_SIZES[name]
    except KeyError:
        raise ModelError(
            f"{key}: unknown model size {name!r}; valid: {', '.join(MODEL_SIZES)}"
        ) from None


def _check_swin_grid(spec: ModelSpec, img_size: int, window: int, key: str) -> None:
    p, stride = spec.patch_size, spec.encoder_stride
    if img_size % stride:
        raise ModelError(
            f"{key}: {img_size} is not divisible by {spec.name}'s encoder stride {stride} "
            f"(patch {p} × 2^{len(spec.depths) - 1} patch mergings)"
        )
    for stage in range(len(spec.depths)):
        grid = img_size // (p * 2**stage)
        # timm shrinks a window larger than the grid to the grid; a grid larger
        # than the window must tile into whole windows (timm would pad silently).
        if grid > window and grid % window:
            factors = f"{window}×{p}" + (f"×{2**stage}" if stage else "")
            raise ModelError(
                f"{key}: {img_size} is not divisible by {spec.name}'s window×patch"
                f"{'×2^' + str(stage) if stage else ''} {factors}={window * p * 2**stage} "
                f"(stage {stage} has a {grid}×{grid} token grid and {window}×{window} windows)"
            )


def validate_sizes(
    name: str,
    img_size: int,
    mask_patch_size: int | None = None,
    *,
    section: str = "pretrain",
    window_size: int | None = None,
) -> ModelSpec:
    """Check that ``name`` runs at ``img_size`` (and with ``mask_patch_size``).

    Errors name ``<section>.image_size`` / ``<section>.mask_patch_size``.
    ``window_size`` overrides the spec's window (a fine-tuning window).
    """
    spec = get_spec(name, key=f"{section}.model")
    key = f"{section}.image_size"
    if img_size <= 0 or img_size % spec.patch_size:
        raise ModelError(
            f"{key}: {img_size} is not divisible by {name}'s patch size {spec.patch_size}"
        )
    if spec.family == "swinv2":
        _check_swin_grid(spec, img_size, window_size or spec.window_size, key)
    if mask_patch_size is not None:
        mkey = f"{section}.mask_patch_size"
        if mask_patch_size <= 0 or img_size % mask_patch_size:
            raise ModelError(f"{mkey}: must divide image_size {img_size}, got {mask_patch_size}")
        if mask_patch_size % spec.patch_size:
            raise ModelError(
                f"{mkey}: must be a multiple of {name}'s patch size {spec.patch_size}, "
                f"got {mask_patch_size}"
            )
    return spec


def create_encoder(
    name: str, *, img_size: int, drop_path_rate: float = 0.0, section: str = "pretrain"
) -> nn.Module:
    """The headless encoder (``num_classes=0``) that SimMIM pre-trains.

    Built on the current default device: wrap in ``with torch.device("meta"):``
    to inspect a size without allocating it.
    """
    spec = validate_sizes(name, img_size, section=section)
    return _BUILDERS[spec.family](
        spec,
        img_size=img_size,
        window_size=spec.window_size,
        pretrained_window_sizes=(0,) * len(spec.depths),
        num_classes=0,
        drop_path_rate=drop_path_rate,
    )


@functools.cache
def count_params_m(name: str, img_size: int | None = None) -> float:
    """Backbone parameters in millions (no classifier, no SimMIM parts), counted on meta."""
    spec = get_spec(name)
    with torch.device("meta"):
        encoder = create_encoder(name, img_size=img_size or spec.img_size)
    return sum(p.numel() for p in encoder.parameters()) / 1e6


def effective_windows(spec: ModelSpec, img_size: int, window_size: int) -> tuple[int, ...]:
    """Per-stage windows as timm uses them: a window never exceeds its stage's grid."""
    return tuple(
        min(window_size, img_size // (spec.patch_size * 2**stage))
        for stage in range(len(spec.depths))
    )


def finetune_window(spec: ModelSpec, img_size: int, pretrain_img_size: int) -> int:
    """The window that keeps the window-to-image ratio of pre-training (192/12 → 224/14)."""
    scaled, rest = divmod(spec.window_size * img_size, pretrain_img_size)
    if rest:
        raise ModelError(
            f"finetune.image_size: {img_size} does not scale {spec.name}'s window "
            f"{spec.window_size} at pretrain.image_size {pretrain_img_size} to a whole window"
        )
    return scaled


def _encoder_entries(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's entries of an encoder or SimMIM state dict, plain key names."""
    out = {}
    for key, value in state.items():
        while key.startswith(("_orig_mod.", "module.")):  # torch.compile / DDP wrappers
            key = key.split(".", 1)[1]
        out[key] = value
    if any(k.startswith("encoder.") for k in out):  # a whole SimMIM model
        out = {k.removeprefix("encoder."): v for k, v in out.items() if k.startswith("encoder.")}
    return {k: v for k, v in out.items() if k.rsplit(".", 1)[-1] not in _SIZE_BUFFERS}


def load_encoder_state(model: nn.Module, encoder_state: Mapping[str, torch.Tensor]) -> None:
    """Load pre-trained encoder weights into a classifier; only its head may stay unset."""
    state = _encoder_entries(encoder_state)
    if isinstance(model, VisionTransformer) and "pos_embed" in state:
        # (1, prefix + h·w, C) → (1, prefix + h'·w', C), bicubic on the h×w grid
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: a different size's weights
        raise ModelError(f"finetune: the pre-trained encoder does not fit: {err}") from None
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ModelError(
            "finetune: the pre-trained encoder does not fit: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )


def create_classifier(
    name: str,
    *,
    num_classes: int,
    img_size: int,
    drop_path_rate: float = 0.1,
    encoder_state: Mapping[str, torch.Tensor] | None = None,
    pretrain_img_size: int | None = None,
) -> nn.Module:
    """Encoder + linear head for fine-tuning, initialised from ``encoder_state``.

    SwinV2 at a new resolution gets a proportionally larger window and
    ``pretrained_window_sizes`` set to the windows of pre-training, so timm
    normalises the log-spaced relative coordinates as in pre-training and the
    continuous position bias MLP transfers (the released 192 → 224 config:
    window 14, pretrained windows 12-12-12-6). ``encoder_state`` may be the
    encoder's or the whole SimMIM model's state dict; None leaves a random init.
    """
    if num_classes <= 0:
        raise ModelError(f"finetune.num_classes: must be > 0, got {num_classes}")
    spec = get_spec(name)
    pretrain_img = pretrain_img_size or img_size
    window, pretrained_windows = 0, (0,) * len(spec.depths)
    if spec.family == "swinv2":
        window = finetune_window(spec, img_size, pretrain_img)
        pretrained_windows = effective_windows(spec, pretrain_img, spec.window_size)
    validate_sizes(name, img_size, section="finetune", window_size=window or None)
    model = _BUILDERS[spec.family](
        spec,
        img_size=img_size,
        window_size=window,
        pretrained_window_sizes=pretrained_windows,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
    )
    if encoder_state is not None:
        load_encoder_state(model, encoder_state)
    return model
