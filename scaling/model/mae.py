"""MAE (He et al., CVPR 2022) around a timm ``VisionTransformer``, unmodified.

Follows the released code (facebookresearch/mae ``models_mae.py``): the patch
embeddings get their position embedding, then only the visible ones (25% at
mask ratio 0.75) are gathered, the class token is prepended and the encoder's
blocks and final norm run on that short sequence. A light decoder projects the
encoded tokens to its own width, puts a shared mask token at every masked
position (undoing the shuffle), adds fixed 2-D sin-cos position embeddings and
runs ``decoder_depth`` Transformer blocks, then a linear layer predicts the
p²·3 pixels of every patch. The loss is the MSE on the masked patches only,
against per-patch normalised pixels (``norm_pix_loss``)::

    loss = Σ_i m_i · mean_j (x̂_ij − t_ij)² / Σ_i m_i

Which patches are masked is explicit: ``forward(images, mask_or_noise)`` takes
either a token mask (B, h, w) of integers or booleans (nonzero = masked) or
MAE's own float noise (B, h·w); either way ``L − int(L·(1 − mask_ratio))`` of
the L = h·w tokens are masked: the largest noises, or exactly the mask's
nonzero tokens (e.g. ``MaskGenerator(mask_patch_size=patch)`` at the same
ratio, so validation masks are seeded like SimMIM's).
:func:`seeded_noise` derives such noise from seed words, never a global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import shake_128
from typing import NamedTuple

import numpy as np
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from scaling.errors import ModelError


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions → (N, dim): sines then cosines of ``pos · 10000^(−2i/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of an h×w grid, row-major: (h·w, dim), float32.

    The first half of the channels encodes the column, the second the row, as in
    MAE's ``get_2d_sincos_pos_embed``.
    """
    if dim % 4:
        raise ModelError(f"mae.decoder_dim: must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    half = dim // 2
    emb = torch.cat([sincos_1d(half, cols.flatten()), sincos_1d(half, rows.flatten())], dim=1)
    return emb.float()


def seeded_noise(batch: int, num_patches: int, *seed_words: int) -> torch.Tensor:
    """MAE's per-sample uniform noise (B, L) in [0, 1), from seed words (SHAKE-128)."""
    out = np.empty((batch, num_patches), np.float64)
    for i in range(batch):
        message = b"mimscale-mae-noise-v1:" + np.asarray([*seed_words, i], "<u8").tobytes()
        scores = np.frombuffer(shake_128(message).digest(8 * num_patches), "<u8")
        out[i] = (scores >> np.uint64(11)) * 2.0**-53  # 53 random bits → [0, 1)
    return torch.from_numpy(out).float()


class Shuffle(NamedTuple):
    """Which tokens an encoder sees and how to put them back."""

    ids_keep: torch.Tensor
    """(B, K) token indices the encoder sees, in shuffle order."""
    ids_restore: torch.Tensor
    """(B, L) inverse permutation: position of every token in [visible, masked] order."""
    mask: torch.Tensor
    """(B, L) float: 1 = masked, 0 = visible."""


def keep_count(num_patches: int, mask_ratio: float) -> int:
    """Tokens the encoder sees: ``int(L · (1 − mask_ratio))`` as in the released code."""
    return int(num_patches * (1 - mask_ratio))


def check_mask_ratio(mask_ratio: float, num_tokens: int, key: str) -> None:
    """``<key>.mask_ratio`` in (0, 1) and leaving 1 … L − 1 of ``num_tokens`` tokens visible."""
    if not 0.0 < mask_ratio < 1.0:
        raise ModelError(f"{key}.mask_ratio: must be in (0, 1), got {mask_ratio}")
    keep = keep_count(num_tokens, mask_ratio)
    if not 0 < keep < num_tokens:
        raise ModelError(
            f"{key}.mask_ratio: {mask_ratio} keeps {keep} of {num_tokens} tokens; need 1 … L − 1"
        )


def shuffle_from(mask_or_noise: torch.Tensor, mask_ratio: float, grid: tuple[int, int]) -> Shuffle:
    """MAE's shuffle from float noise or a token mask, either (B, h, w) or (B, h·w).

    The encoder sees ``keep_count(L, mask_ratio)`` tokens: the smallest noises,
    or a mask's visible tokens in index order. A mask must mask exactly the other
    ``L − keep`` tokens of every image; that is checked when the mask is on the
    CPU (free) and trusted on an accelerator, where reading the counts back
    would stall every step.
    """
    batch = mask_or_noise.shape[0]
    h, w = grid
    if mask_or_noise.shape[1:] not in ((h, w), (h * w,)):
        raise ModelError(
            f"mae mask: expected a (B, {h}, {w}) token mask or (B, {h * w}) noise, "
            f"got {tuple(mask_or_noise.shape)}"
        )
    check_mask_ratio(mask_ratio, h * w, "mae")
    keep = keep_count(h * w, mask_ratio)
    if mask_or_noise.is_floating_point():
        noise = mask_or_noise.reshape(batch, -1)
    else:
        masked = mask_or_noise.reshape(batch, -1).bool()
        if masked.device.type == "cpu":
            counts = sorted(set(masked.sum(1).tolist()))
            if counts != [h * w - keep]:
                raise ModelError(
                    f"mae mask: mask_ratio {mask_ratio} masks {h * w - keep} of {h * w} tokens "
                    f"in every image, the mask has {counts}"
                )
        noise = masked.float()  # visible (0) sort first; a stable sort keeps index order
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # ascending: small = keep
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    return Shuffle(ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore))


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, L, C), ids (B, K) → (B, K, C)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), p·p·C), row-major patches, (row, col, channel) inside."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), -1)


def norm_patches(target: torch.Tensor) -> torch.Tensor:
    """Normalise every patch (last dim) by its mean and unbiased variance, eps 1e-6."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1e-6) ** 0.5


def masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Σ_i w_i · mean_j (pred − target)²_ij / Σ_i w_i, in float32; pred/target (B, L, D)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * weight).sum() / weight.sum()


def check_decoder(width: int, depth: int, heads: int, key: str) -> None:
    """Range-check a decoder's shape; errors name ``<key>.decoder_*``."""
    for name, value in (("decoder_dim", width), ("decoder_depth", depth)):
        if value < 1:
            raise ModelError(f"{key}.{name}: must be ≥ 1, got {value}")
    if heads < 1 or width % heads:
        raise ModelError(f"{key}.decoder_heads: must divide decoder_dim {width}, got {heads}")


def encode_visible(
    encoder: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor
) -> Iterator[torch.Tensor]:
    """Patch embed + positions, keep ``ids_keep``, prepend the class token, run every block.

    Yields the token sequence (B, 1 + K, C) after each block (before the final norm).
    """
    x = encoder.patch_embed(images)  # (B, L, C)
    prefix = encoder.num_prefix_tokens
    pos = encoder.pos_embed  # (1, prefix + L, C): timm's default (no_embed_class=False)
    x = gather_tokens(x + pos[:, prefix:], ids_keep)  # (B, K, C)
    cls = (encoder.cls_token + pos[:, :prefix]).expand(x.shape[0], -1, -1)
    x = encoder.norm_pre(torch.cat([cls, x], dim=1))  # (B, 1 + K, C)
    for block in encoder.blocks:
        x = block(x)
        yield x


def check_vit(encoder: nn.Module, method: str) -> VisionTransformer:
    """The encoder, if it is a timm ViT with one class token and positions on it."""
    if not isinstance(encoder, VisionTransformer):
        raise ModelError(
            f"{method} needs a ViT encoder (timm VisionTransformer), not {type(encoder).__name__}"
        )
    if encoder.num_prefix_tokens != 1 or encoder.no_embed_class or encoder.pos_embed is None:
        raise ModelError(f"{method} needs a ViT with one class token and absolute positions")
    return encoder


class MAEDecoder(nn.Module):
    """Embed → mask tokens + unshuffle → fixed sin-cos positions → blocks → norm."""

    def __init__(self, in_dim: int, grid: tuple[int, int], *, width: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = torch.cat([torch.zeros(1, width), sincos_2d(width, *grid)])  # class token: zeros
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, D)
        self.blocks = nn.Sequential(
            *(Block(width, heads, 4.0, qkv_bias=True) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.grid = grid
        torch.nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, C_enc) → (B, L, width), class token dropped."""
        x = self.embed(latent)  # (B, 1 + K, D)
        b, n_all = x.shape[0], ids_restore.shape[1]
        fill = self.mask_token.to(x.dtype).expand(b, n_all + 1 - x.shape[1], -1)
        tokens = gather_tokens(torch.cat([x[:, 1:], fill], dim=1), ids_restore)  # (B, L, D)
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed.to(x.dtype)
        return self.norm(self.blocks(x))[:, 1:]


class MAE(nn.Module):
    """A timm ViT encoder that sees only visible patches, MAE's decoder and its MSE loss."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        sincos_pos_embed: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = check_vit(encoder, "MAE")
        check_mask_ratio(mask_ratio, encoder.patch_embed.num_patches, "mae")
        check_decoder(decoder_dim, decoder_depth, decoder_heads, "mae")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = grid = tuple(encoder.patch_embed.grid_size)
        if sincos_pos_embed:  # MAE's encoder positions are fixed too
            fixed = torch.cat(
                [torch.zeros(1, encoder.embed_dim), sincos_2d(encoder.embed_dim, *grid)]
            )
            with torch.no_grad():
                encoder.pos_embed.copy_(fixed.unsqueeze(0))
            encoder.pos_embed.requires_grad_(False)
        self.decoder = MAEDecoder(
            encoder.embed_dim, grid, width=decoder_dim, depth=decoder_depth, heads=decoder_heads
        )
        self.pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        torch.nn.init.xavier_uniform_(self.pred.weight)
        nn.init.zeros_(self.pred.bias)

    def reconstruct(
        self, images: torch.Tensor, mask_or_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction (B, L, p²·3), mask (B, L) float, 1 = masked)."""
        shuffle = shuffle_from(mask_or_noise.to(images.device), self.mask_ratio, self.grid)
        *_, x = encode_visible(self.encoder, images, shuffle.ids_keep)
        latent = self.encoder.norm(x)  # (B, 1 + K, C)
        return self.pred(self.decoder(latent, shuffle.ids_restore)), shuffle.mask

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch pixels (B, L, p²·3), normalised per patch when ``norm_pix_loss``."""
        target = patchify(images.float(), self.patch_size)
        return norm_patches(target) if self.norm_pix_loss else target

    def forward(self, images: torch.Tensor, mask_or_noise: torch.Tensor) -> torch.Tensor:
        """The MAE loss of a batch: images (B, 3, H, W), a token mask or noise (see module)."""
        pred, mask = self.reconstruct(images, mask_or_noise)
        return masked_patch_mse(pred, self.target(images), mask)
