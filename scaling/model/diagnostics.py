"""Representation diagnostics of a pre-trained encoder on a fixed batch.

After Xie et al., "Revealing the Dark Secrets of Masked Image Modeling": per
layer and head, the average attention distance (pixels), the attention entropy
and the KL divergence between heads' attention distributions (head diversity);
linear CKA between layers' token features; and the query–key normalised mutual
information that LocalMIM reports (Wang et al.; after Park et al., "What do
self-supervised ViTs learn?").

Attention maps come from forward hooks, timm stays unmodified: a ViT block's
``Attention`` may use the fused kernel, so its hook recomputes the softmax from
the module's own input, ``qkv`` and norms (no dropout at eval); a SwinV2
``WindowAttention`` applies an ``nn.Softmax`` module, whose output a hook reads
directly (per window; the shifted-window mask already zeroes pairs that are not
neighbours, so window coordinates give true distances). ViT statistics use the
patch tokens only: class-token rows and columns are dropped and each row is
renormalised over the patches.

Every statistic is a pure function of attention probabilities (..., H, N, N)
(rows sum to 1) or of token features, averaged over images (windows) and queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from scaling.errors import ModelError

_EPS = 1e-12


def grid_coords(h: int, w: int) -> torch.Tensor:
    """(h·w, 2) float (row, col) of every token of an h×w grid, row-major."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).double()


def attention_distance(probs: torch.Tensor, coords: torch.Tensor, token_px: float) -> torch.Tensor:
    """Mean over images and queries of Σ_k a_qk · ‖c_q − c_k‖ · token_px, per head: (H,)."""
    dist = torch.cdist(coords, coords).to(probs)  # (N, N) in tokens
    per_head = (probs * dist).sum(-1).mean(-1)  # (..., H)
    return per_head.reshape(-1, per_head.shape[-1]).mean(0) * token_px


def attention_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over images and queries of −Σ_k a_qk log a_qk (nats), per head: (H,)."""
    per_head = -torch.special.xlogy(probs, probs).sum(-1).mean(-1)  # (..., H)
    return per_head.reshape(-1, per_head.shape[-1]).mean(0)


def head_kl(probs: torch.Tensor) -> torch.Tensor:
    """(H, H): KL(a_i ‖ a_j) between heads' rows, averaged over images and queries."""
    p = probs.reshape(-1, *probs.shape[-3:])  # (B, H, N, N)
    logp = p.clamp_min(_EPS).log()
    # Σ_k p_i log p_i − Σ_k p_i log p_j for every pair (i, j), per image and query
    self_term = torch.special.xlogy(p, p).sum(-1)  # (B, H, N)
    cross = torch.einsum("bhnk,bgnk->bhgn", p, logp)  # (B, H, H, N)
    return (self_term.unsqueeze(2) - cross).mean(dim=(0, 3))


def head_diversity(probs: torch.Tensor) -> float:
    """The mean KL over ordered pairs of distinct heads (0 with one head)."""
    kl = head_kl(probs)
    h = kl.shape[0]
    return float((kl.sum() - kl.diagonal().sum()) / (h * (h - 1))) if h > 1 else 0.0


def query_key_nmi(probs: torch.Tensor) -> torch.Tensor:
    """Per head (H,): I(Q; K) / √(H(Q) H(K)) with p(q, k) = a_qk / N, averaged over images.

    Queries are uniform, so H(Q) = log N and I = H(K) − mean_q H(a_q·). Identity
    attention gives 1, uniform attention 0.
    """
    p = probs.reshape(-1, *probs.shape[-3:])  # (B, H, N, N)
    n = p.shape[-1]
    p_k = p.mean(-2)  # (B, H, N): key marginal
    h_k = -torch.special.xlogy(p_k, p_k).sum(-1)
    h_k_given_q = -torch.special.xlogy(p, p).sum(-1).mean(-1)
    mi = (h_k - h_k_given_q).clamp_min(0)
    return (mi / (math.log(n) * h_k).clamp_min(_EPS).sqrt()).mean(0)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of features x (n, d1) and y (n, d2): ‖ŷᵀx̂‖²_F / (‖x̂ᵀx̂‖_F ‖ŷᵀŷ‖_F), centred."""
    if x.shape[0] != y.shape[0]:
        raise ModelError(f"linear_cka: x has {x.shape[0]} rows, y has {y.shape[0]}")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den.clamp_min(_EPS))


def cka_matrix(features: list[torch.Tensor]) -> torch.Tensor:
    """(L, L) linear CKA between every pair of layers' features (n, d_l)."""
    n = len(features)
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(features[i], features[j])
    return out


@dataclass(frozen=True)
class AttentionMap:
    """One layer's attention probabilities and the geometry of its tokens."""

    probs: torch.Tensor
    """(B', H, N, N): rows sum to 1 (B' = images, or images × windows)."""
    coords: torch.Tensor
    """(N, 2) token positions in tokens."""
    token_px: int
    """Pixels per token side at this layer."""


_OnAttention = Callable[[AttentionMap], None]


def _vit_hook(on_attention: _OnAttention, grid: tuple[int, int], patch: int, prefix: int):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        b, n, _ = x.shape
        qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd) each
        q, k = module.q_norm(q), module.k_norm(k)
        probs = ((q * module.scale) @ k.transpose(-2, -1)).softmax(-1)
        probs = probs[..., prefix:, prefix:]  # patch tokens only, renormalised below
        probs = probs / probs.sum(-1, keepdim=True)
        on_attention(AttentionMap(probs.detach().float(), grid_coords(*grid), patch))

    return hook


def _swin_hook(on_attention: _OnAttention, window: tuple[int, int], token_px: int):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        on_attention(AttentionMap(output.detach().float(), grid_coords(*window), token_px))

    return hook


def _feature_hook(store: list, prefix: int, grid: tuple[int, int] | None):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = output.detach()
        if grid is not None:  # ViT: (B, prefix + L, C) → (B, h, w, C)
            x = x[:, prefix:].unflatten(1, grid)
        store.append(x)

    return hook


def _hooks(encoder: nn.Module, on_attention: _OnAttention, feats: list) -> list:
    """Register attention and block-output hooks on every block; return their handles."""
    handles = []
    if isinstance(encoder, VisionTransformer):
        grid, prefix = tuple(encoder.patch_embed.grid_size), encoder.num_prefix_tokens
        patch = encoder.patch_embed.patch_size[0]
        for block in encoder.blocks:
            handles.append(
                block.attn.register_forward_hook(_vit_hook(on_attention, grid, patch, prefix))
            )
            handles.append(block.register_forward_hook(_feature_hook(feats, prefix, grid)))
    elif isinstance(encoder, SwinTransformerV2):
        patch = encoder.patch_embed.patch_size[0]
        for s, stage in enumerate(encoder.layers):
            for block in stage.blocks:
                hook = _swin_hook(on_attention, tuple(block.attn.window_size), patch * 2**s)
                handles.append(block.attn.softmax.register_forward_hook(hook))
                handles.append(block.register_forward_hook(_feature_hook(feats, 0, None)))
    else:
        raise ModelError(
            f"diagnostics support timm VisionTransformer and SwinTransformerV2, "
            f"not {type(encoder).__name__}"
        )
    return handles


@torch.no_grad()
def _run(encoder: nn.Module, images: torch.Tensor, on_attention: _OnAttention) -> list:
    """One eval-mode forward with the hooks on; returns every block's output (B, h, w, C)."""
    feats: list[torch.Tensor] = []
    handles = _hooks(encoder, on_attention, feats)  # refuses an unsupported encoder first
    size = tuple(encoder.patch_embed.img_size)
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != size:
        for handle in handles:
            handle.remove()
        raise ModelError(
            f"diagnostics: images must be (B, 3, {size[0]}, {size[1]}) for this encoder, "
            f"got {tuple(images.shape)}"
        )
    was_training = encoder.training
    try:
        encoder.eval()
        encoder.forward_features(images)
    finally:
        encoder.train(was_training)
        for handle in handles:
            handle.remove()
    return feats


def capture(encoder: nn.Module, images: torch.Tensor) -> tuple[list[AttentionMap], list]:
    """Every block's attention map and output features (B, h, w, C) on ``images``, in eval mode."""
    attn: list[AttentionMap] = []
    feats = _run(encoder, images, attn.append)
    return attn, feats


def pooled_features(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Block outputs average-pooled to the coarsest grid among them: (B·h·w, C) each."""
    h = min(f.shape[1] for f in feats)
    w = min(f.shape[2] for f in feats)
    out = []
    for f in feats:
        pooled = F.adaptive_avg_pool2d(f.permute(0, 3, 1, 2).float(), (h, w))  # (B, C, h, w)
        out.append(pooled.permute(0, 2, 3, 1).reshape(-1, f.shape[-1]))
    return out


@dataclass(frozen=True)
class Diagnostics:
    """An encoder's diagnostics; one entry per block (layer), heads per layer may differ."""

    distance_px: list[list[float]]
    """[layer][head] average attention distance in pixels."""
    entropy: list[list[float]]
    """[layer][head] attention entropy in nats."""
    nmi: list[list[float]]
    """[layer][head] query–key normalised mutual information."""
    head_kl: list[float]
    """[layer] mean KL between distinct heads (head diversity)."""
    cka: list[list[float]]
    """[layer][layer] linear CKA of block outputs."""

    def summary(self) -> dict[str, float]:
        """Scalar candidates for a proxy metric: means over every layer and the last one."""

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        out = {}
        for name, metric in (("attn_distance_px", self.distance_px), ("attn_entropy", self.entropy),
                             ("qk_nmi", self.nmi)):  # fmt: skip
            out[name] = mean([v for heads in metric for v in heads])
            out[f"{name}_last"] = mean(metric[-1])
        out["head_kl"], out["head_kl_last"] = mean(self.head_kl), self.head_kl[-1]
        n = len(self.cka)
        out["cka_adjacent"] = mean([self.cka[i][i + 1] for i in range(n - 1)]) if n > 1 else 1.0
        out["cka_first_last"] = self.cka[0][-1]
        return out

    def rows(self) -> list[dict]:
        """Long format: layer, head (−1: per layer), other (CKA: 2nd layer), metric, value."""
        out = []
        for metric in ("distance_px", "entropy", "nmi"):
            for layer, heads in enumerate(getattr(self, metric)):
                out += [
                    dict(layer=layer, head=h, other=-1, metric=metric, value=v)
                    for h, v in enumerate(heads)
                ]
        out += [
            dict(layer=i, head=-1, other=-1, metric="head_kl", value=v)
            for i, v in enumerate(self.head_kl)
        ]
        for i, row in enumerate(self.cka):
            out += [
                dict(layer=i, head=-1, other=j, metric="cka", value=v) for j, v in enumerate(row)
            ]
        return out


def diagnose(encoder: nn.Module, images: torch.Tensor) -> Diagnostics:
    """All diagnostics of ``encoder`` (a timm ViT or SwinV2) on one fixed batch.

    Each layer's attention is reduced to its statistics inside the hook, so at
    most one layer's maps are alive at a time.
    """
    layers: list[tuple[list[float], list[float], list[float], float]] = []

    def reduce(a: AttentionMap) -> None:
        layers.append(
            (
                attention_distance(a.probs, a.coords, a.token_px).tolist(),
                attention_entropy(a.probs).tolist(),
                query_key_nmi(a.probs).tolist(),
                head_diversity(a.probs),
            )
        )

    feats = _run(encoder, images, reduce)
    distance, entropy, nmi, kl = (list(column) for column in zip(*layers, strict=True))
    cka = cka_matrix(pooled_features(feats)).tolist()
    return Diagnostics(distance_px=distance, entropy=entropy, nmi=nmi, head_kl=kl, cka=cka)
