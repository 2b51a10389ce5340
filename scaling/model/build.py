"""Encoders and classifiers from the registry, built by timm.

``create_encoder`` builds the headless encoder that SimMIM pre-trains;
``create_classifier`` builds the fine-tuning model at a possibly larger
resolution and loads the pre-trained encoder into it (each family adapts the
weights: SwinV2 grows its window with the image and its log-spaced continuous
position bias MLP transfers; ViT resamples its absolute position embedding).
``count_params_m`` counts a size's backbone on the meta device, so even
swinv2-g costs no memory.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from scaling.errors import ModelError
from scaling.model.sizes import FAMILIES, get_spec, validate_sizes

# Non-persistent buffers that depend on the window and the image size; timm
# recomputes them at construction, so stale copies in a checkpoint are dropped.
_SIZE_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def create_encoder(
    name: str, *, img_size: int, drop_path_rate: float = 0.0, section: str = "pretrain"
) -> nn.Module:
    """The headless encoder (``num_classes=0``) that SimMIM pre-trains.

    Built on the current default device: wrap in ``with torch.device("meta"):``
    to inspect a size without allocating it.
    """
    spec = validate_sizes(name, img_size, section=section)
    return spec.family_record.build(
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
    for family in FAMILIES.values():
        if isinstance(model, family.encoder_type()):
            state = family.adapt_state(model, state)
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
    family = spec.family_record
    window = family.finetune_window(spec, img_size, pretrain_img)
    validate_sizes(name, img_size, section="finetune", window_size=window or None)
    model = family.build(
        spec,
        img_size=img_size,
        window_size=window,
        pretrained_window_sizes=family.pretrained_windows(spec, pretrain_img),
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
    )
    if encoder_state is not None:
        load_encoder_state(model, encoder_state)
    return model
