"""LocalMIM (Wang et al., CVPR 2023): local multi-scale reconstruction at several encoder stages.

Several encoder layers ("taps") each reconstruct the masked part of the image
through their own tiny decoder; lower taps predict fine-scale targets (small
regions), upper taps coarse-scale ones. A target at region size r is, for every
r×r region of the image, its normalised pixels (r²·3 values, normalised per
region as MAE does) or its HOG histogram (``hog``, 3·nbins values). The loss
is the sum over taps of the masked MSE, each region weighted by the fraction of
its tokens that are masked (``region_weights``)::

    loss = Σ_k Σ_i M_ki · mean_j (x̂_kij − t_kij)² / Σ_i M_ki

**ViT (columnar)**, as the released ViT code (``models_mim.py``, MAE-derived):
the encoder sees only the visible patches (MAE's shuffle, :mod:`scaling.model.mae`),
taps after blocks ``[1, 3, depth − 3, depth − 1]`` each get a LayerNorm and an
MAE-style decoder (mask tokens, fixed sin-cos positions, ``decoder_depth``
blocks) whose feature map is rescaled by 4, 2, 1, ½ (two / one transposed
convolutions, nothing, 2×2 average pooling) before a 1×1 convolution; with
patch 16 the regions are 4, 8, 16, 32 px. HOG is the released ViT default.
One deviation: the last tap uses the encoder's own final norm (so fine-tuning
starts from a trained norm) instead of a separate one; a LayerNorm either way.

**Swin (pyramidal)**: SimMIM-style input (a mask token replaces masked patch
embeddings; the encoder sees every token), taps at the end of each stage, each
with a LayerNorm and a linear (1×1) decoder predicting the target of its own
token's region: stage k's stride, patch·2^k px.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn

from scaling.errors import ModelError
from scaling.model.mae import (
    MAEDecoder,
    check_decoder,
    check_mask_ratio,
    check_vit,
    encode_visible,
    masked_patch_mse,
    norm_patches,
    patchify,
    shuffle_from,
)

_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def pixel_targets(images: torch.Tensor, region: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, (H/r)·(W/r), r²·3): each region's pixels, normalised per region."""
    return norm_patches(patchify(images.float(), region))


def pixel_pyramid(images: torch.Tensor, regions: tuple[int, ...], nbins: int) -> list:
    """:func:`pixel_targets` at every region size (``nbins`` unused)."""
    del nbins
    return [pixel_targets(images, r) for r in regions]


def hog_votes(images: torch.Tensor, nbins: int) -> torch.Tensor:
    """(B, 3, H, W) → (B·3, nbins, H, W): every pixel's gradient magnitude in its orientation bin.

    Sobel gradients per channel (reflect padding); unsigned orientation, bins of π/nbins.
    """
    x = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    b, c = x.shape[:2]
    kernel = torch.stack([_SOBEL, _SOBEL.t()]).to(x)  # (2, 3, 3)
    grads = F.conv2d(x.reshape(b * c, 1, *x.shape[2:]), kernel.unsqueeze(1))  # (B·3, 2, H, W)
    magnitude = torch.hypot(grads[:, :1], grads[:, 1:])  # (B·3, 1, H, W); norm(dim=1) is slow
    phase = torch.atan2(grads[:, :1], grads[:, 1:])  # (−π, π]
    bins = torch.floor(phase / torch.pi * nbins).long() % nbins
    votes = magnitude.new_zeros(b * c, nbins, *magnitude.shape[2:])
    return votes.scatter_(1, bins, magnitude)


def hog_pyramid(images: torch.Tensor, regions: tuple[int, ...], nbins: int) -> list:
    """Per-channel HOG of every r×r region for each r: (B, (H/r)·(W/r), 3·nbins) each.

    Votes are averaged over the region and L2-normalised per channel; channels
    are concatenated (R bins, G bins, B bins). The votes are computed once, and
    a region that is a multiple of a smaller one pools the smaller one's map.
    """
    votes = hog_votes(images, nbins)
    pooled: dict[int, torch.Tensor] = {1: votes}
    for r in sorted(set(regions)):
        base = max(q for q in pooled if r % q == 0)
        pooled[r] = F.avg_pool2d(pooled[base], r // base) if r > base else pooled[base]
    b = images.shape[0]
    out = []
    for r in regions:
        hist = F.normalize(pooled[r], p=2, dim=1)  # (B·3, n, H/r, W/r)
        out.append(hist.reshape(b, -1, *hist.shape[2:]).flatten(2).transpose(1, 2))
    return out


def hog_targets(images: torch.Tensor, region: int, nbins: int = 9) -> torch.Tensor:
    """(B, 3, H, W) → (B, (H/r)·(W/r), 3·nbins): the HOG of every r×r region."""
    return hog_pyramid(images, (region,), nbins)[0]


_Targets = Callable[[torch.Tensor, tuple[int, ...], int], list]
TARGETS: dict[str, tuple[_Targets, Callable[[int, int], int]]] = {
    "pixel": (pixel_pyramid, lambda region, nbins: 3 * region * region),
    "hog": (hog_pyramid, lambda region, nbins: 3 * nbins),
}
"""Target name → (targets at every region size, their width per region from (region, nbins))."""


def get_target(name: str) -> tuple[_Targets, Callable[[int, int], int]]:
    """The registered target ``name``; an unknown one lists the valid names."""
    try:
        return TARGETS[name]
    except KeyError:
        valid = ", ".join(TARGETS)
        raise ModelError(f"localmim.target: unknown {name!r}; valid: {valid}") from None


def region_weights(mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Token mask (B, h, w) → region weights (B, h·s · w·s), rows first.

    s ≥ 1: every token splits into s×s regions that inherit its mask; s < 1:
    a region covers (1/s)² tokens and weighs the fraction of them that is masked.
    """
    m = mask.float().unsqueeze(1)  # (B, 1, h, w)
    if scale >= 1:
        m = F.interpolate(m, scale_factor=int(scale), mode="nearest")
    else:
        m = F.avg_pool2d(m, round(1 / scale))
    return m.flatten(1)


SCALES = (4.0, 2.0, 1.0, 0.5)
"""Feature-map resizes a ViT tap's decoder can make (region = patch / scale)."""


def _scale_head(width: int, scale: float) -> tuple[list[nn.Module], int]:
    """Layers that resize a (B, width, h, w) map by ``scale``, and their output width."""
    up = {
        4.0: lambda: [
            nn.ConvTranspose2d(width, width // 2, 2, stride=2),
            LayerNorm2d(width // 2),
            nn.GELU(),
            nn.ConvTranspose2d(width // 2, width // 4, 2, stride=2),
        ],
        2.0: lambda: [nn.ConvTranspose2d(width, width // 2, 2, stride=2)],
        1.0: lambda: [],
        0.5: lambda: [nn.AvgPool2d(2, stride=2)],
    }
    hidden = {4.0: width // 4, 2.0: width // 2, 1.0: width, 0.5: width}
    return up[scale](), hidden[scale]


class ScaleDecoder(nn.Module):
    """LocalMIM's ViT decoder: MAE decoder → resize by ``scale`` → 1×1 conv to ``out_dim``."""

    def __init__(
        self,
        in_dim: int,
        grid: tuple[int, int],
        *,
        out_dim: int,
        scale: float,
        width: int,
        depth: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.decoder = MAEDecoder(in_dim, grid, width=width, depth=depth, heads=heads)
        layers, hidden = _scale_head(width, scale)
        self.pred = nn.Sequential(*layers, nn.Conv2d(hidden, out_dim, 1))
        self.grid = grid

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, C) → prediction (B, h·s · w·s, out_dim)."""
        x = self.decoder(latent, ids_restore)  # (B, L, D)
        x = x.transpose(1, 2).unflatten(2, self.grid)  # (B, D, h, w)
        return self.pred(x).flatten(2).transpose(1, 2)


def default_taps(depth: int) -> tuple[int, ...]:
    """Blocks after which ViT reconstructs: the released [1, 3, d−3, d−1], or every
    block of a shallow (< 7 blocks) tiny flavour, at most the last four."""
    if depth >= 7:
        return (1, 3, depth - 3, depth - 1)
    return tuple(range(max(0, depth - 4), depth))


def _check_taps(taps: tuple[int, ...], scales: tuple[float, ...], depth: int) -> None:
    if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= depth:
        raise ModelError(
            f"localmim.taps: must be increasing block indices in 0 … {depth - 1}, got {list(taps)}"
        )
    unknown = [s for s in scales if s not in SCALES]
    if unknown:
        raise ModelError(f"localmim.scales: {unknown[0]} not one of {', '.join(map(str, SCALES))}")
    if len(scales) != len(taps):
        raise ModelError(
            f"localmim.scales: need one per tap ({len(taps)}), got {len(scales)}: {list(scales)}"
        )


class LocalMIMViT(nn.Module):
    """LocalMIM on a timm ViT: visible-only encoder, one decoder per tap (see module)."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        taps: tuple[int, ...] | None = None,
        scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
        target: str = "hog",
        hog_nbins: int = 9,
        mask_ratio: float = 0.75,
        decoder_dim: int = 256,
        decoder_depth: int = 1,
        decoder_heads: int = 8,
    ) -> None:
        super().__init__()
        self.encoder = check_vit(encoder, "LocalMIM (ViT)")
        depth = len(encoder.blocks)
        self.taps = tuple(taps) if taps is not None else default_taps(depth)
        self.scales = tuple(float(s) for s in scales)
        if taps is None:  # a shallow flavour with fewer default taps keeps the coarsest scales
            self.scales = self.scales[-len(self.taps) :]
        _check_taps(self.taps, self.scales, depth)
        check_decoder(decoder_dim, decoder_depth, decoder_heads, "localmim")
        check_mask_ratio(mask_ratio, encoder.patch_embed.num_patches, "localmim")
        if hog_nbins < 1:
            raise ModelError(f"localmim.hog_nbins: must be ≥ 1, got {hog_nbins}")
        self.target_fn, width_of = get_target(target)
        self.hog_nbins, self.mask_ratio = hog_nbins, mask_ratio
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.regions = tuple(self._region(s) for s in self.scales)
        dim = encoder.embed_dim
        # the last block's tap reuses the encoder's final norm (see module docstring)
        self.norms = nn.ModuleList(
            nn.Identity() if t == depth - 1 else nn.LayerNorm(dim, eps=1e-6) for t in self.taps
        )
        self.decoders = nn.ModuleList(
            ScaleDecoder(
                dim,
                self.grid,
                out_dim=width_of(r, hog_nbins),
                scale=s,
                width=decoder_dim,
                depth=decoder_depth,
                heads=decoder_heads,
            )
            for s, r in zip(self.scales, self.regions, strict=True)
        )

    def _region(self, scale: float) -> int:
        region = self.patch_size / scale
        if region != int(region) or any(g * scale != int(g * scale) for g in self.grid):
            raise ModelError(
                f"localmim.scales: {scale} does not fit patch {self.patch_size} "
                f"and token grid {self.grid[0]}×{self.grid[1]}"
            )
        return int(region)

    def forward(self, images: torch.Tensor, mask_or_noise: torch.Tensor) -> torch.Tensor:
        """The summed multi-scale loss; ``mask_or_noise`` as for :class:`~scaling.model.mae.MAE`."""
        shuffle = shuffle_from(mask_or_noise.to(images.device), self.mask_ratio, self.grid)
        states = list(encode_visible(self.encoder, images, shuffle.ids_keep))
        mask = shuffle.mask.reshape(-1, *self.grid)  # (B, h, w)
        targets = self.target_fn(images, self.regions, self.hog_nbins)
        loss = images.new_zeros((), dtype=torch.float32)
        for k, tap in enumerate(self.taps):
            norm = self.encoder.norm if tap == len(states) - 1 else self.norms[k]
            pred = self.decoders[k](norm(states[tap]), shuffle.ids_restore)
            weights = region_weights(mask, self.scales[k])
            loss = loss + masked_patch_mse(pred, targets[k], weights)
        return loss


class LocalMIMSwin(nn.Module):
    """LocalMIM on a timm SwinV2: mask-token input, a linear decoder after every tapped stage."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        stages: tuple[int, ...] | None = None,
        target: str = "pixel",
        hog_nbins: int = 9,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, SwinTransformerV2):
            raise ModelError(
                f"LocalMIM (Swin) needs a timm SwinTransformerV2, not {type(encoder).__name__}"
            )
        self.encoder = encoder
        n = len(encoder.layers)
        self.stages = tuple(stages) if stages is not None else tuple(range(n))
        if (
            not self.stages
            or list(self.stages) != sorted(set(self.stages))
            or not (self.stages[0] >= 0 and self.stages[-1] < n)
        ):
            raise ModelError(
                f"localmim.stages: must be increasing stage indices in 0 … {n - 1}, "
                f"got {list(self.stages)}"
            )
        if hog_nbins < 1:
            raise ModelError(f"localmim.hog_nbins: must be ≥ 1, got {hog_nbins}")
        self.target_fn, width_of = get_target(target)
        self.hog_nbins = hog_nbins
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.regions = tuple(self.patch_size * 2**s for s in self.stages)
        dims = [info["num_chs"] for info in encoder.feature_info]  # per stage output
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, encoder.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        self.norms = nn.ModuleList(
            nn.Identity() if s == n - 1 else nn.LayerNorm(dims[s]) for s in self.stages
        )
        self.decoders = nn.ModuleList(
            nn.Linear(dims[s], width_of(r, hog_nbins))
            for s, r in zip(self.stages, self.regions, strict=True)
        )

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The summed multi-scale loss: images (B, 3, H, W), token mask (B, H/p, W/p)."""
        x = self.encoder.patch_embed(images)  # (B, h, w, C), NHWC
        if mask.shape != x.shape[:-1]:
            raise ModelError(
                f"localmim mask: expected a {tuple(x.shape[:-1])} token mask, "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.to(x.device)
        x = torch.where(mask.unsqueeze(-1).bool(), self.mask_token.to(x.dtype), x)
        targets = self.target_fn(images, self.regions, self.hog_nbins)
        loss = images.new_zeros((), dtype=torch.float32)
        for s, layer in enumerate(self.encoder.layers):
            x = layer(x)  # (B, h/2^s, w/2^s, C_s)
            if s not in self.stages:
                continue
            k = self.stages.index(s)
            norm = self.encoder.norm if s == len(self.encoder.layers) - 1 else self.norms[k]
            pred = self.decoders[k](norm(x)).flatten(1, 2)  # (B, L_s, D)
            loss = loss + masked_patch_mse(pred, targets[k], region_weights(mask, 0.5**s))
        return loss
