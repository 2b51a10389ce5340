"""Diagnostics: every statistic on inputs with a known answer, and hooks on real timm encoders."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from scaling.errors import ModelError
from scaling.model.diagnostics import (
    Diagnostics,
    attention_distance,
    attention_entropy,
    capture,
    cka_matrix,
    diagnose,
    grid_coords,
    head_diversity,
    head_kl,
    linear_cka,
    query_key_nmi,
)

N = 16  # a 4×4 token grid


def _uniform(batch: int = 2, heads: int = 3) -> torch.Tensor:
    return torch.full((batch, heads, N, N), 1.0 / N)


def _identity(batch: int = 2, heads: int = 3) -> torch.Tensor:
    return torch.eye(N).expand(batch, heads, N, N).clone()


def test_identity_attention_has_distance_zero_entropy_zero_and_nmi_one() -> None:
    probs, coords = _identity(), grid_coords(4, 4)
    assert attention_distance(probs, coords, 16).tolist() == [0.0, 0.0, 0.0]
    assert attention_entropy(probs).tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(query_key_nmi(probs), torch.ones(3))


def test_uniform_attention_has_maximal_entropy_nmi_zero_and_no_head_diversity() -> None:
    probs = _uniform()
    torch.testing.assert_close(attention_entropy(probs), torch.full((3,), math.log(N)))
    torch.testing.assert_close(query_key_nmi(probs), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(head_kl(probs), torch.zeros(3, 3), atol=1e-6, rtol=0)
    assert head_diversity(probs) == pytest.approx(0.0, abs=1e-6)


def test_distance_is_in_pixels_and_averages_over_queries() -> None:
    coords = grid_coords(1, 2)  # two tokens side by side
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(1, 1, 2, 2)
    assert attention_distance(swap, coords, 8).tolist() == [8.0]
    half = torch.tensor([[0.5, 0.5], [0.0, 1.0]]).expand(1, 1, 2, 2)  # query 1: itself
    assert attention_distance(half, coords, 8).tolist() == [2.0]
    diag = grid_coords(2, 2)  # token 0 → token 3 is one diagonal step: √2 tokens
    corner = torch.zeros(1, 1, 4, 4)
    corner[..., 3] = 1.0
    want = (math.sqrt(2) + 1 + 1 + 0) / 4 * 4
    assert attention_distance(corner, diag, 4).item() == pytest.approx(want)


def test_head_kl_matches_the_formula_for_two_known_heads() -> None:
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    probs = torch.stack([p.expand(3, 3), q.expand(3, 3)]).unsqueeze(0)  # (1, 2, 3, 3)
    kl_pq = float((p * (p / q).log()).sum())
    kl = head_kl(probs)
    torch.testing.assert_close(kl, torch.tensor([[0.0, kl_pq], [kl_pq, 0.0]]))
    assert head_diversity(probs) == pytest.approx(kl_pq)


def test_linear_cka_is_invariant_to_orthogonal_maps_scale_and_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.0 * x + 5.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(200, 12, generator=gen)) < 0.2
    matrix = cka_matrix([x, x @ q, torch.randn(200, 5, generator=gen)])
    assert matrix.diagonal().tolist() == [1.0, 1.0, 1.0]
    assert matrix[0, 1] == pytest.approx(1.0) and torch.equal(matrix, matrix.T)
    with pytest.raises(ModelError, match="linear_cka: x has 200 rows, y has 10"):
        linear_cka(x, x[:10])


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, qkv_bias=True,
        global_pool="avg", fc_norm=False, num_classes=0,
    )  # fmt: skip


def _swin() -> SwinTransformerV2:
    torch.manual_seed(0)
    return SwinTransformerV2(
        img_size=32, patch_size=2, embed_dim=16, depths=(2, 1), num_heads=(1, 2),
        window_size=4, num_classes=0,
    )  # fmt: skip


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_vit_hooks_recompute_the_attention_that_timm_applies() -> None:
    encoder = _vit()
    attn, feats = capture(encoder, _images())
    assert len(attn) == 3 and len(feats) == 3
    assert attn[0].probs.shape == (2, 3, 16, 16) and attn[0].token_px == 8
    torch.testing.assert_close(attn[0].probs.sum(-1), torch.ones(2, 3, 16))
    assert feats[-1].shape == (2, 4, 4, 48)
    # zero query/key weights and biases: softmax of zeros over 17 tokens, 16 patches kept
    with torch.no_grad():
        encoder.blocks[1].attn.qkv.weight[:96].zero_()
        encoder.blocks[1].attn.qkv.bias[:96].zero_()
    d = diagnose(encoder, _images())
    assert d.entropy[1] == pytest.approx([math.log(16)] * 3, abs=1e-5)
    assert d.nmi[1] == pytest.approx([0.0] * 3, abs=1e-5)
    assert all(not m._forward_hooks for m in encoder.modules())  # hooks removed
    assert encoder.training  # mode restored


def test_swin_hooks_read_the_softmax_per_window() -> None:
    encoder = _swin()
    attn, _ = capture(encoder, _images())
    assert [a.probs.shape for a in attn] == [(2 * 16, 1, 16, 16)] * 2 + [(2 * 4, 2, 16, 16)]
    assert [a.token_px for a in attn] == [2, 2, 4]
    torch.testing.assert_close(attn[1].probs.sum(-1), torch.ones(32, 1, 16))
    shifted = attn[1].probs  # the second block shifts: non-neighbours get (almost) nothing
    assert shifted.min() < 1e-30
    d = diagnose(encoder, _images())
    max_px = math.dist((0, 0), (3, 3)) * 4
    assert all(0 < v < max_px for layer in d.distance_px for v in layer)
    assert len(d.cka) == 3 and d.cka[0][0] == pytest.approx(1.0)
    assert [len(h) for h in d.entropy] == [1, 1, 2]
    rows = d.rows()
    assert len(rows) == 3 * (1 + 1 + 2) + 3 + 9
    assert {r["metric"] for r in rows} == {"distance_px", "entropy", "nmi", "head_kl", "cka"}


def test_an_unsupported_encoder_is_refused() -> None:
    with pytest.raises(
        ModelError, match=r"diagnostics support timm VisionTransformer .*not Linear"
    ):
        diagnose(nn.Linear(2, 2), _images())


def test_diagnose_reduces_the_same_maps_that_capture_returns() -> None:
    encoder = _vit()
    attn, _ = capture(encoder, _images())
    d = diagnose(encoder, _images())
    assert d.entropy == [attention_entropy(a.probs).tolist() for a in attn]
    assert d.head_kl == [head_diversity(a.probs) for a in attn]


def test_summary_averages_layers_and_reads_the_last_one() -> None:
    d = Diagnostics(
        distance_px=[[2.0, 4.0], [6.0, 10.0]],
        entropy=[[1.0, 1.0], [0.0, 2.0]],
        nmi=[[0.5, 0.5], [0.25, 0.75]],
        head_kl=[0.1, 0.3],
        cka=[[1.0, 0.8, 0.2], [0.8, 1.0, 0.6], [0.2, 0.6, 1.0]],
    )
    assert d.summary() == pytest.approx(
        {
            "attn_distance_px": 5.5,
            "attn_distance_px_last": 8.0,
            "attn_entropy": 1.0,
            "attn_entropy_last": 1.0,
            "qk_nmi": 0.5,
            "qk_nmi_last": 0.5,
            "head_kl": 0.2,
            "head_kl_last": 0.3,
            "cka_adjacent": 0.7,
            "cka_first_last": 0.2,
        }
    )


def test_images_of_the_wrong_size_are_refused_and_leave_no_hooks() -> None:
    encoder = _swin()
    with pytest.raises(ModelError, match=r"images must be \(B, 3, 32, 32\) .*got \(2, 3, 64, 64\)"):
        diagnose(encoder, torch.zeros(2, 3, 64, 64))
    assert all(not m._forward_hooks for m in encoder.modules())
