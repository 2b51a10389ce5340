"""LocalMIM: the loss against the released ViT math re-derived here, targets, Swin, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from scaling.errors import ModelError
from scaling.model.localmim import (
    LocalMIMSwin,
    LocalMIMViT,
    default_taps,
    hog_targets,
    pixel_targets,
    region_weights,
)
from scaling.model.mae import seeded_noise


def _vit(depth: int = 4) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=depth, num_heads=3, qkv_bias=True,
        global_pool="avg", fc_norm=False, num_classes=0,
    )  # fmt: skip


def _swin() -> SwinTransformerV2:
    torch.manual_seed(0)
    return SwinTransformerV2(
        img_size=32, patch_size=2, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4),
        window_size=4, num_classes=0,
    )  # fmt: skip


def _jitter(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero biases and norms, so every term of the math counts
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _reference_hog(imgs: torch.Tensor, pool: int, nbins: int = 9) -> torch.Tensor:
    """The released HOGLayer per channel (Sobel, reflect pad, scatter_ votes), concatenated."""
    weight = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    weight = torch.stack([weight, weight.t()])[:, None]  # (2, 1, 3, 3)
    feats = []
    for c in range(3):
        gxy = F.conv2d(F.pad(imgs[:, c : c + 1], (1, 1, 1, 1), mode="reflect"), weight)
        mag = gxy.norm(dim=1)[:, None]
        phase = torch.atan2(gxy[:, 0], gxy[:, 1])[:, None] / math.pi * nbins
        out = torch.zeros(gxy.shape[0], nbins, *gxy.shape[2:])
        out.scatter_(1, phase.floor().long() % nbins, mag)
        feats.append(F.normalize(F.avg_pool2d(out, pool, stride=pool), p=2, dim=1))
    return torch.cat(feats, 1).flatten(2, 3).transpose(1, 2)


def _reference_recal_mask(mask: torch.Tensor, s: float) -> torch.Tensor:
    """The released recal_mask: repeat s×s for s ≥ 1, mean of (1/s)² tokens below."""
    b, n = mask.shape
    h = int(n**0.5)
    if s >= 1:
        s = int(s)
        return mask.reshape(b, h, h).unsqueeze(3).unsqueeze(2).repeat(1, 1, s, 1, s).reshape(b, -1)
    s = int(1 / s)
    return mask.reshape(b, h // s, s, h // s, s).transpose(2, 3).mean((-2, -1)).reshape(b, -1)


def _reference_decoder(dec: torch.nn.Module, x: torch.Tensor, ids_restore: torch.Tensor):
    """The released MAE_Decoder.forward with the same weights."""
    core = dec.decoder
    x = F.linear(x, core.embed.weight, core.embed.bias)
    tokens = core.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:], tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], dim=1) + core.pos_embed
    for blk in core.blocks:
        x = blk(x)
    x = core.norm(x)
    h = w = int(ids_restore.shape[1] ** 0.5)
    x = x[:, 1:].transpose(1, 2).reshape(x.size(0), -1, h, w)
    return dec.pred(x).flatten(2, 3).transpose(1, 2)


def _reference_vit_loss(model: LocalMIMViT, imgs: torch.Tensor, noise: torch.Tensor):
    """The released MaskedAutoencoderViT (models_mim.py) forward, written out."""
    enc = model.encoder
    x = F.conv2d(imgs, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=8)
    x = x.flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:]
    n, length, d = x.shape
    len_keep = int(length * (1 - 0.75))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    x = torch.cat(((enc.cls_token + enc.pos_embed[:, :1]).expand(n, -1, -1), x), dim=1)
    latent = []
    for i, blk in enumerate(enc.blocks):
        x = blk(x)
        if i in model.taps:
            k = model.taps.index(i)
            latent.append((enc.norm if i == len(enc.blocks) - 1 else model.norms[k])(x))
    pred = [_reference_decoder(model.decoders[k], z, ids_restore) for k, z in enumerate(latent)]
    loss = 0.0
    for k, s in enumerate(model.scales):
        target = _reference_hog(imgs, int(8 / s))
        m = _reference_recal_mask(mask, s)
        loss += (((pred[k] - target) ** 2).mean(dim=-1) * m).sum() / m.sum()
    return loss


def test_vit_loss_equals_the_released_math_on_the_same_weights_and_noise() -> None:
    model = _jitter(LocalMIMViT(_vit(), decoder_dim=32, decoder_heads=4)).eval()
    assert model.taps == (0, 1, 2, 3) and model.regions == (2, 4, 8, 16)
    images, noise = _images(), seeded_noise(2, 16, 4)
    with torch.no_grad():
        ours, ref = model(images, noise), _reference_vit_loss(model, images, noise)
    assert ref.item() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_hog_target_equals_the_released_hog_layer() -> None:
    images = _images()
    for pool in (2, 4, 8):
        torch.testing.assert_close(hog_targets(images, pool), _reference_hog(images, pool))


def test_hog_of_a_horizontal_ramp_votes_in_one_bin() -> None:
    ramp = torch.arange(16.0).expand(1, 3, 16, 16)  # brightness grows to the right
    hog = hog_targets(ramp, 4).reshape(1, 16, 3, 9)  # (B, regions, channel, bin)
    # Sobel gx = −8, gy = 0: phase atan2(−8, 0) = −π/2 → floor(−4.5) mod 9 = bin 4
    want = torch.zeros(9)
    want[4] = 1.0
    torch.testing.assert_close(hog, want.expand(1, 16, 3, 9))


def test_pixel_target_normalises_each_region() -> None:
    images = _images()
    t = pixel_targets(images, 4)  # (B, 64, 48)
    assert t.shape == (2, 64, 48)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 64), atol=1e-3, rtol=0)
    block = images[0, :, 4:8, 0:4].permute(1, 2, 0).flatten()  # region (row 1, col 0)
    torch.testing.assert_close(t[0, 8], (block - block.mean()) / (block.var() + 1e-6) ** 0.5)


def test_region_weights_repeat_and_average_the_token_mask() -> None:
    mask = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.uint8)
    up = region_weights(mask, 2.0).reshape(4, 4)
    assert up[:2, :2].eq(1).all() and up.sum() == 4
    assert region_weights(mask, 0.5).tolist() == [[0.25]]
    flat = torch.rand(3, 16).round()
    for s in (4.0, 2.0, 1.0, 0.5):
        torch.testing.assert_close(
            region_weights(flat.reshape(3, 4, 4), s), _reference_recal_mask(flat, s)
        )


def _reference_swin_loss(model: LocalMIMSwin, imgs: torch.Tensor, mask: torch.Tensor):
    """SimMIM-style input, every stage's output normed and linearly decoded, pixel targets."""
    enc = model.encoder
    x = enc.patch_embed(imgs)
    w = mask.unsqueeze(-1).float()
    x = x * (1 - w) + model.mask_token * w
    loss = 0.0
    for s, stage in enumerate(enc.layers):
        x = stage(x)
        norm = enc.norm if s == len(enc.layers) - 1 else model.norms[s]
        pred = F.linear(norm(x), model.decoders[s].weight, model.decoders[s].bias).flatten(1, 2)
        r = 2 * 2**s
        b = imgs.shape[0]
        t = (
            imgs.reshape(b, 3, 32 // r, r, 32 // r, r)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(b, -1, 3 * r * r)
        )
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        m = F.avg_pool2d(mask.float()[:, None], 2**s).flatten(1)
        loss += (((pred - t) ** 2).mean(-1) * m).sum() / m.sum()
    return loss


def test_swin_loss_equals_the_multi_scale_formula() -> None:
    model = _jitter(LocalMIMSwin(_swin())).eval()
    assert model.regions == (2, 4, 8)
    images = _images()
    mask = (torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.6).to(torch.uint8)
    with torch.no_grad():
        ours, ref = model(images, mask), _reference_swin_loss(model, images, mask)
    assert ref.item() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["pixel", "hog"])
def test_gradients_reach_every_trainable_parameter(target: str) -> None:
    vit = LocalMIMViT(_vit(), target=target, decoder_dim=32, decoder_heads=4)
    swin = LocalMIMSwin(_swin(), target=target)
    mask = torch.zeros(2, 16, 16, dtype=torch.uint8)
    mask[:, :8] = 1
    for model, m in ((vit, seeded_noise(2, 16, 0)), (swin, mask)):
        model(_images(), m).backward()
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_default_taps_follow_the_release_and_shrink_for_tiny_flavours() -> None:
    assert default_taps(12) == (1, 3, 9, 11)
    assert default_taps(24) == (1, 3, 21, 23)
    assert default_taps(4) == (0, 1, 2, 3)
    model = LocalMIMViT(_vit(depth=3), decoder_dim=32, decoder_heads=4)
    assert model.taps == (0, 1, 2) and model.scales == (2.0, 1.0, 0.5)


def test_errors_name_the_key() -> None:
    with pytest.raises(ModelError, match=r"localmim.target: unknown 'dino'; valid: pixel, hog"):
        LocalMIMViT(_vit(), target="dino")
    with pytest.raises(
        ModelError, match=r"localmim.taps: must be increasing .* 0 … 3, got \[1, 4\]"
    ):
        LocalMIMViT(_vit(), taps=(1, 4), scales=(1.0, 0.5))
    with pytest.raises(ModelError, match=r"localmim.scales: need one per tap \(2\), got 4"):
        LocalMIMViT(_vit(), taps=(1, 3))
    with pytest.raises(ModelError, match=r"localmim.scales: 3.0 not one of 4.0, 2.0, 1.0, 0.5"):
        LocalMIMViT(_vit(), taps=(3,), scales=(3.0,), decoder_dim=32, decoder_heads=4)
    with pytest.raises(
        ModelError, match=r"localmim.scales: 0.5 does not fit patch 8 and token grid 3×3"
    ):
        vit = VisionTransformer(img_size=24, patch_size=8, embed_dim=48, depth=2, num_heads=3)
        LocalMIMViT(vit, taps=(1,), scales=(0.5,), decoder_dim=32, decoder_heads=4)
    with pytest.raises(ModelError, match=r"localmim.mask_ratio: must be in \(0, 1\), got 0.0"):
        LocalMIMViT(_vit(), mask_ratio=0.0)
    with pytest.raises(ModelError, match=r"localmim.decoder_heads: must divide decoder_dim 32"):
        LocalMIMViT(_vit(), decoder_dim=32, decoder_heads=3)
    with pytest.raises(ModelError, match=r"localmim.hog_nbins: must be ≥ 1, got 0"):
        LocalMIMSwin(_swin(), target="hog", hog_nbins=0)
    with pytest.raises(
        ModelError, match=r"localmim.stages: must be increasing .* 0 … 2, got \[2, 1\]"
    ):
        LocalMIMSwin(_swin(), stages=(2, 1))
    with pytest.raises(
        ModelError, match=r"localmim mask: expected a \(2, 16, 16\) token mask, got \(2, 8, 8\)"
    ):
        LocalMIMSwin(_swin())(_images(), torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ModelError, match=r"LocalMIM \(ViT\) needs a ViT encoder"):
        LocalMIMViT(_swin())
    with pytest.raises(ModelError, match=r"LocalMIM \(Swin\) needs a timm SwinTransformerV2"):
        LocalMIMSwin(_vit())


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_bf16_autocast_gives_a_finite_loss_close_to_fp32(family: str) -> None:
    if family == "vit":
        model, mask = LocalMIMViT(_vit(), decoder_dim=32, decoder_heads=4), seeded_noise(2, 16, 1)
    else:
        model, mask = LocalMIMSwin(_swin()), (torch.rand(2, 16, 16) < 0.6).to(torch.uint8)
    model.eval()
    with torch.no_grad():
        fp32 = model(_images(), mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(_images(), mask)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


def test_both_families_run_on_the_meta_device_without_reading_values_back() -> None:
    """No host read per step (a stall on a GPU), so FLOPs can be counted on meta."""
    with torch.device("meta"):
        vit = LocalMIMViT(_vit(), decoder_dim=32, decoder_heads=4)
        swin = LocalMIMSwin(_swin(), target="hog")
        images = torch.empty(2, 3, 32, 32)
        vit_mask = torch.empty(2, 4, 4, dtype=torch.uint8)
        swin_mask = torch.empty(2, 16, 16, dtype=torch.uint8)
    for model, mask in ((vit, vit_mask), (swin, swin_mask)):
        with FlopCounterMode(display=False) as counter:
            model(images, mask).backward()
        assert counter.get_total_flops() > 0
