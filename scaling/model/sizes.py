"""Model sizes: a registry of encoder records that imports no torch.

The paper's SwinV2 family (Xie et al., "On Data Scaling in Masked Image
Modeling") runs at 192 px, window 12, patch 4, depths 2-2-18-2 and 32 channels per
head; only the width changes from S to G. Their backbone parameter counts (no
classifier) are the paper's 49.0M / 86.9M / 195.2M / 655.2M / 1061.0M
(:func:`scaling.model.build.count_params_m` counts them on the meta device). ViT/16
encoders are a second family, and the ``*-nano`` / ``*-micro`` flavours are small
enough for a CPU. What a family means (stride, windows, builder, SimMIM split) is
its :class:`~scaling.model.family.Family` record; a size is a :class:`ModelSpec`.
Loading a study, ``plan`` and ``status`` validate against this registry without
importing torch or timm.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.errors import ModelError
from scaling.model import swinv2, vit
from scaling.model.family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (swinv2.FAMILY, vit.FAMILY)}
"""Registered encoder families by name."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One registered encoder size."""

    name: str
    """Registry name, e.g. ``swinv2-b``."""
    family: str
    """A name in :data:`FAMILIES`: which timm class builds it."""
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
        if self.family not in FAMILIES:
            raise ModelError(f"family: unknown {self.family!r}; valid: {', '.join(FAMILIES)}")
        if len(self.depths) != len(self.num_heads):
            raise ModelError(f"{self.name}: depths and num_heads differ in length")

    @property
    def family_record(self) -> Family:
        return FAMILIES[self.family]

    @property
    def encoder_stride(self) -> int:
        """Pixels per feature of the last stage (the SimMIM decoder's PixelShuffle factor)."""
        return self.family_record.stride(self)

    @property
    def num_features(self) -> int:
        """Channels of the encoder's final features."""
        return self.family_record.num_features(self)


def _swinv2(name: str, embed_dim: int, **kw: object) -> ModelSpec:
    kw = {"depths": (2, 2, 18, 2), "window_size": 12, "patch_size": 4, "img_size": 192} | kw
    return ModelSpec(
        name=name,
        family="swinv2",
        embed_dim=embed_dim,
        num_heads=swinv2.heads(embed_dim, len(kw["depths"])),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _vit(name: str, embed_dim: int, depth: int, num_heads: int, **kw: object) -> ModelSpec:
    kw = {"patch_size": 16, "img_size": 224} | kw
    return ModelSpec(
        name=name,
        family="vit",
        embed_dim=embed_dim,
        depths=(depth,),
        num_heads=(num_heads,),
        **kw,  # type: ignore[arg-type]
    )


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
"""Registered sizes by name."""


def get_spec(name: str, *, key: str = "model") -> ModelSpec:
    """The registered size ``name``; an unknown name lists the valid ones."""
    try:
        return MODEL_SIZES[name]
    except KeyError:
        raise ModelError(
            f"{key}: unknown model size {name!r}; valid: {', '.join(MODEL_SIZES)}"
        ) from None


def validate_sizes(
    name: str, img_size: int, *, section: str = "pretrain", window_size: int | None = None
) -> ModelSpec:
    """Check that ``name`` runs at ``img_size``; errors name ``<section>.image_size``.

    ``window_size`` overrides the spec's window (a fine-tuning window).
    """
    spec = get_spec(name, key=f"{section}.model")
    key = f"{section}.image_size"
    if img_size <= 0 or img_size % spec.patch_size:
        raise ModelError(
            f"{key}: {img_size} is not divisible by {name}'s patch size {spec.patch_size}"
        )
    spec.family_record.check_image(spec, img_size, window_size or spec.window_size, key)
    return spec


def finetune_window(spec: ModelSpec, img_size: int, pretrain_img_size: int) -> int:
    """The fine-tuning window of ``spec`` at ``img_size`` (0 for global attention)."""
    return spec.family_record.finetune_window(spec, img_size, pretrain_img_size)
