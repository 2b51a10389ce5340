"""Masked-image-modeling methods: a registry of torch-free records, builders imported lazily.

A :class:`Method` says which encoder families a method pre-trains, where its recipe
lives in a study (``[pretrain]`` for SimMIM, whose fields have always been there;
``[mae]``, ``[localmim]`` for the others), how to build its pre-training module around
a registered encoder, and how its masks are drawn — for training, per sample from the
sampler's seed words, and for the fixed validation set, per image from its manifest
key (:meth:`~scaling.data.masking.MaskGenerator.val_mask`), so every cell of a method
scores the same tokens of the same images:

- **simmim**: random block masks of ``pretrain.mask_patch_size`` px at
  ``pretrain.mask_ratio`` (:mod:`scaling.model.simmim`).
- **mae**: a random ``mae.mask_ratio`` of the patches (75%), one mask block per
  token; ViT only (:mod:`scaling.model.mae`).
- **localmim**: on a ViT, patch masks as MAE; on a SwinV2, SimMIM-style blocks of
  ``localmim.mask_patch_size`` px (:mod:`scaling.model.localmim`).

A recipe is duck-typed here (``scaling.config`` defines the dataclasses and sits above
this room). Importing this module imports no torch, so loading a study stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scaling.data.masking import MaskGenerator, check_mask_geometry
from scaling.errors import ModelError
from scaling.model.sizes import ModelSpec, get_spec

Module = Any  # torch.nn.Module, without importing torch here


@dataclass(frozen=True, kw_only=True)
class Method:
    """One registered MIM method (torch only inside ``build``)."""

    name: str
    """Registry name, e.g. ``mae``: a value of ``grid.methods``."""
    families: tuple[str, ...]
    """Encoder families it pre-trains (names in :data:`scaling.model.sizes.FAMILIES`)."""
    section: str
    """The study section holding its recipe: ``pretrain`` (SimMIM) or its own name."""
    build: Callable[[Module, ModelSpec, Any], Module]
    """``(encoder, spec, recipe)`` → the pre-training module; ``module(images, mask)`` is
    the loss and ``module.encoder`` the encoder."""
    masks: Callable[[ModelSpec, Any, int], MaskGenerator]
    """``(spec, recipe, image_size)`` → the generator of its training and validation masks."""
    ratio_key: str
    """The dotted key of its mask ratio (``grid.mask_ratios`` replaces that field)."""

    def check(self, spec: ModelSpec, where: str) -> None:
        """Raise ModelError at ``where`` unless the method pre-trains ``spec``'s family."""
        if spec.family not in self.families:
            kinds = " or ".join(_FAMILY_WORDS.get(f, f) for f in self.families)
            raise ModelError(f"{where}: {self.name} needs {kinds} encoder, got {spec.name}")


_FAMILY_WORDS = {"vit": "a ViT", "swinv2": "a SwinV2"}


def _block_masks(spec: ModelSpec, image_size: int, patch: int, ratio: float, key: str) -> Any:
    check_mask_geometry(
        image_size=image_size,
        mask_patch_size=patch,
        model_patch_size=spec.patch_size,
        mask_ratio=ratio,
        section=key,
        model=spec.name,
    )
    return MaskGenerator(
        input_size=image_size,
        mask_patch_size=patch,
        model_patch_size=spec.patch_size,
        mask_ratio=ratio,
    )


def patch_masks(spec: ModelSpec, image_size: int, ratio: float, key: str) -> MaskGenerator:
    """One mask block per token masking exactly MAE's ``L − int(L · (1 − ratio))`` tokens."""
    gen = _block_masks(spec, image_size, spec.patch_size, ratio, key)
    tokens = (image_size // spec.patch_size) ** 2
    keep = int(tokens * (1 - ratio))
    if not 0 < keep < tokens or gen.num_masked_blocks != tokens - keep:
        raise ModelError(
            f"{key}.mask_ratio: {ratio} keeps {keep} of {spec.name}'s {tokens} tokens at "
            f"{image_size} px; need 1 … {tokens - 1} kept"
        )
    return gen


def _simmim_build(encoder: Module, spec: ModelSpec, p: Any) -> Module:
    from scaling.model.simmim import SimMIM

    return SimMIM(
        encoder,
        encoder_stride=spec.encoder_stride,
        patch_size=spec.patch_size,
        norm_target=p.norm_target,
        norm_target_window=p.norm_target_window,
    )


def _mae_build(encoder: Module, spec: ModelSpec, r: Any) -> Module:
    from scaling.model.mae import MAE

    return MAE(
        encoder,
        mask_ratio=r.mask_ratio,
        decoder_dim=r.decoder_dim,
        decoder_depth=r.decoder_depth,
        decoder_heads=r.decoder_heads,
        norm_pix_loss=r.norm_pix_loss,
    )


def _localmim_build(encoder: Module, spec: ModelSpec, r: Any) -> Module:
    from scaling.model.localmim import LocalMIMSwin, LocalMIMViT

    if spec.family == "swinv2":
        return LocalMIMSwin(
            encoder, stages=r.stages or None, target=r.target or "pixel", hog_nbins=r.hog_nbins
        )
    return LocalMIMViT(
        encoder,
        taps=r.taps or None,
        scales=r.scales or (4.0, 2.0, 1.0, 0.5),
        target=r.target or "hog",
        hog_nbins=r.hog_nbins,
        mask_ratio=r.mask_ratio,
        decoder_dim=r.decoder_dim,
        decoder_depth=r.decoder_depth,
        decoder_heads=r.decoder_heads,
    )


def _localmim_masks(spec: ModelSpec, r: Any, image_size: int) -> MaskGenerator:
    if spec.family == "swinv2":
        return _block_masks(spec, image_size, r.mask_patch_size, r.mask_ratio, "localmim")
    return patch_masks(spec, image_size, r.mask_ratio, "localmim")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="simmim",
            families=("swinv2", "vit"),
            section="pretrain",
            build=_simmim_build,
            masks=lambda spec, p, img: _block_masks(
                spec, img, p.mask_patch_size, p.mask_ratio, "pretrain"
            ),
            ratio_key="pretrain.mask_ratio",
        ),
        Method(
            name="mae",
            families=("vit",),
            section="mae",
            build=_mae_build,
            masks=lambda spec, r, img: patch_masks(spec, img, r.mask_ratio, "mae"),
            ratio_key="mae.mask_ratio",
        ),
        Method(
            name="localmim",
            families=("swinv2", "vit"),
            section="localmim",
            build=_localmim_build,
            masks=_localmim_masks,
            ratio_key="localmim.mask_ratio",
        ),
    )
}
"""Registered methods by name."""


def get_method(name: str, *, key: str = "grid.methods") -> Method:
    """The registered method ``name``; an unknown name lists the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ModelError(f"{key}: unknown method {name!r}; valid: {', '.join(METHODS)}") from None


def build_method(
    method: str, model: str, *, img_size: int, recipe: Any, drop_path_rate: float = 0.0
) -> Module:
    """The pre-training module of ``method`` around a fresh registered encoder ``model``."""
    from scaling.model.build import create_encoder

    m, spec = get_method(method), get_spec(model)
    m.check(spec, "model")
    if method == "simmim":  # the exact construction order of every earlier SimMIM cell
        from scaling.model.simmim import build_simmim

        return build_simmim(
            model,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            norm_target=recipe.norm_target,
            norm_target_window=recipe.norm_target_window,
        )
    encoder = create_encoder(model, img_size=img_size, drop_path_rate=drop_path_rate)
    return m.build(encoder, spec, recipe)


def flops_per_image(method: str, model: str, *, img_size: int, recipe: Any) -> float:
    """FLOPs of one image's forward + backward of ``method`` (FlopCounterMode, meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(model)
    masks = get_method(method).masks(spec, recipe, img_size)
    with torch.device("meta"):
        module = build_method(method, model, img_size=img_size, recipe=recipe)
        images = torch.zeros(1, 3, img_size, img_size)
    mask = torch.from_numpy(masks(0, 0, 0)).unsqueeze(0).to("meta")  # (1, h, w)
    counter = FlopCounterMode(display=False)
    with counter:
        module(images, mask).backward()
    return float(counter.get_total_flops())


def encoder_forward_flops(model: str, *, img_size: int) -> float:
    """FLOPs of the bare encoder's forward on one image (the diagnostics stage's unit)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from scaling.model.build import create_encoder

    with torch.device("meta"):
        encoder = create_encoder(model, img_size=img_size).eval()
        images = torch.zeros(1, 3, img_size, img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder.forward_features(images)
    return float(counter.get_total_flops())
