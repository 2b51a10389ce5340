"""The recipe sections of the methods other than SimMIM, and of the diagnostics stage.

``[mae]`` and ``[localmim]`` hold what only that method reads (its decoder, its mask
ratio, its targets); the shared training recipe (batch, lr, schedule, image size, drop
path, …) stays in ``[pretrain]``, whose mask fields are SimMIM's. Each section takes
per-size overrides like ``[pretrain.models."<size>"]``: ``[mae.models."vit-b"]
decoder_depth = 4``. ``[diagnostics]`` turns on the representation-diagnostics stage
(one per pre-training stage, :mod:`scaling.model.diagnostics`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scaling.config.parse import ConfigError, check

LOCALMIM_TARGETS = ("", "pixel", "hog")  # scaling.model.localmim.TARGETS, torch-free


def _check_decoder(width: int, depth: int, heads: int) -> None:
    check(width >= 1 and width % 4 == 0, "decoder_dim", f"must be a multiple of 4, got {width}")
    check(depth >= 1, "decoder_depth", f"must be >= 1, got {depth}")
    check(
        heads >= 1 and width % heads == 0,
        "decoder_heads",
        f"must divide decoder_dim {width}, got {heads}",
    )


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    mask_ratio: float = 0.75
    """Fraction of patches masked (the encoder sees the rest)."""
    decoder_dim: int = 512
    """Width of the light Transformer decoder."""
    decoder_depth: int = 8
    """Blocks of the decoder."""
    decoder_heads: int = 16
    """Attention heads of the decoder."""
    norm_pix_loss: bool = True
    """Targets are each patch's pixels normalised by its mean and std."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-size overrides of any field above: ``[mae.models."vit-b"] decoder_depth = 4``."""

    def __post_init__(self) -> None:
        check(0 < self.mask_ratio < 1, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        _check_decoder(self.decoder_dim, self.decoder_depth, self.decoder_heads)


@dataclass(frozen=True, kw_only=True)
class LocalMIMConfig:
    mask_ratio: float = 0.75
    """Fraction of tokens (ViT) or mask blocks (SwinV2) masked."""
    mask_patch_size: int = 32
    """SwinV2: side of one mask block in pixels (SimMIM-style masks); a ViT masks patches."""
    target: str = ""
    """``pixel`` (normalised per region) or ``hog``; '' is the released default of the
    family: HOG for a ViT, pixels for a SwinV2."""
    hog_nbins: int = 9
    """Orientation bins of the HOG target."""
    taps: tuple[int, ...] = ()
    """ViT: blocks after which a decoder reconstructs (empty: [1, 3, d − 3, d − 1], or the
    last four blocks of a shallow flavour)."""
    scales: tuple[float, ...] = ()
    """ViT: each tap's feature-map resize, 4, 2, 1 or 0.5 (empty: 4, 2, 1, 0.5)."""
    stages: tuple[int, ...] = ()
    """SwinV2: stages whose output reconstructs (empty: every stage)."""
    decoder_dim: int = 256
    """ViT: width of each tap's decoder."""
    decoder_depth: int = 1
    """ViT: blocks of each tap's decoder."""
    decoder_heads: int = 8
    """ViT: attention heads of each tap's decoder."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-size overrides of any field above: ``[localmim.models."swinv2-b"] mask_ratio = 0.6``."""

    def __post_init__(self) -> None:
        check(0 < self.mask_ratio < 1, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        check(
            self.mask_patch_size > 0,
            "mask_patch_size",
            f"must be > 0, got {self.mask_patch_size}",
        )
        check(
            self.target in LOCALMIM_TARGETS,
            "target",
            f"must be one of pixel, hog (or '' for the family default), got {self.target!r}",
        )
        check(self.hog_nbins >= 1, "hog_nbins", f"must be >= 1, got {self.hog_nbins}")
        for i, s in enumerate(self.scales):
            check(s in (4.0, 2.0, 1.0, 0.5), f"scales[{i}]", f"must be 4, 2, 1 or 0.5, got {s}")
        _check_decoder(self.decoder_dim, self.decoder_depth, self.decoder_heads)


@dataclass(frozen=True, kw_only=True)
class DiagnosticsConfig:
    enabled: bool = False
    """Run the diagnostics stage after every pre-training stage."""
    images: int = 64
    """Images of the fixed diagnostic batch: the ``images`` smallest keys of ``data.val``."""
    batch_size: int = 16
    """Images per forward (the statistics are averaged over the whole set)."""

    def __post_init__(self) -> None:
        check(1 <= self.images <= 100_000, "images", f"must be in 1 … 100000, got {self.images}")
        check(
            1 <= self.batch_size <= self.images,
            "batch_size",
            f"must be in 1 … images ({self.images}), got {self.batch_size}",
        )


Point = tuple[str, str, int, str]  # (model, data, iterations, method)


def check_methods(
    points: list[tuple[str, Point]],
    method_keys: dict[str, str],
    recipe_of: Callable[[str, str], Any],
    pretrain_of: Callable[[str], Any],
    ratios: tuple[tuple[str, float], ...],
) -> None:
    """Each (model, method) of the grid: a registered method that pre-trains the model's
    family at the recipe's image and mask sizes. ``points``: (model's dotted key, point);
    ``method_keys``: the dotted key naming each method; ``recipe_of(method, model)``: the
    resolved recipe. Errors are located (``grid.methods[1]: mae needs a ViT encoder, …``)."""
    from scaling.errors import UserError
    from scaling.model.methods import get_method
    from scaling.model.sizes import get_spec

    for name, key in method_keys.items():
        try:
            get_method(name, key=key)
        except UserError as err:
            raise ConfigError(key, str(err).partition(": ")[2]) from None
    seen = set()
    for model_key, (model, _, _, name) in points:
        if (model, name) in seen:
            continue
        seen.add((model, name))
        method, spec, key = get_method(name), get_spec(model), method_keys[name]
        try:
            method.check(spec, key)
        except UserError as err:
            raise ConfigError(
                key,
                f"{str(err).partition(': ')[2]}; leave it out with [[grid.exclude]] "
                f'method = "{name}", model = "{model}"',
            ) from None
        _check_method_recipe(method, spec, recipe_of(name, model), pretrain_of(model), ratios,
                             f" ({model_key} = {model!r})")  # fmt: skip


def _check_method_recipe(
    method: Any, spec: Any, recipe: Any, pretrain: Any, ratios: tuple, where: str
) -> None:
    from scaling.errors import UserError

    if method.name == "simmim":  # rules.check_model_fits checks SimMIM's masks
        return
    if pretrain.activation_checkpointing != "none":
        raise ConfigError(
            "pretrain.activation_checkpointing",
            f"only simmim checkpoints activations; {method.name} runs without, got "
            f"{pretrain.activation_checkpointing!r}{where}",
        )
    for key, ratio in ratios or ((method.ratio_key, None),):
        try:
            r = recipe if ratio is None else dataclasses.replace(recipe, mask_ratio=ratio)
            method.masks(spec, r, pretrain.image_size)
        except UserError as err:
            bad, _, message = str(err).partition(": ")
            bad = key if bad.endswith("mask_ratio") else bad
            raise ConfigError(bad, message + where) from None
