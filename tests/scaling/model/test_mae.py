"""MAE: the loss against MAE's released math re-derived here, masking, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from scaling.errors import ModelError
from scaling.model.mae import MAE, seeded_noise, shuffle_from, sincos_2d


def _vit(img: int = 32, patch: int = 8, depth: int = 2) -> VisionTransformer:
    """A tiny timm ViT as the registry builds it (fc_norm off, mean pool)."""
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=48, depth=depth, num_heads=3, qkv_bias=True,
        global_pool="avg", fc_norm=False, num_classes=0,
    )  # fmt: skip


def _mae(**kwargs: object) -> MAE:
    kwargs = {"decoder_dim": 32, "decoder_depth": 2, "decoder_heads": 4, **kwargs}
    model = MAE(_vit(), **kwargs)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero biases and norms, so every term of the math counts
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _images(batch: int = 3, img: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(7))


def _reference_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed(dim, grid, cls_token=True), re-derived in numpy."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def _reference_loss(model: MAE, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """facebookresearch/mae models_mae.py forward, written out with the same weights."""
    enc, dec = model.encoder, model.decoder
    p = enc.patch_embed.patch_size[0]
    x = F.conv2d(imgs, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=p)
    x = x.flatten(2).transpose(1, 2)  # [N, L, D]
    x = x + enc.pos_embed[:, 1:, :]
    n, length, d = x.shape
    len_keep = int(length * (1 - 0.75))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(n, -1, -1)
    x = torch.cat((cls, x), dim=1)
    for blk in enc.blocks:
        x = blk(x)
    x = enc.norm(x)
    # decoder
    x = F.linear(x, dec.embed.weight, dec.embed.bias)
    tokens = dec.mask_token.repeat(n, ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    grid = enc.patch_embed.grid_size[0]
    x = x + torch.from_numpy(_reference_pos_embed(x.shape[-1], grid)).float().unsqueeze(0)
    for blk in dec.blocks:
        x = blk(x)
    x = dec.norm(x)
    pred = F.linear(x, model.pred.weight, model.pred.bias)[:, 1:, :]
    # loss
    h = w = imgs.shape[2] // p
    target = imgs.reshape(n, 3, h, p, w, p)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, h * w, p**2 * 3)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def test_loss_equals_the_released_math_on_the_same_weights_and_noise() -> None:
    model = _mae().eval()
    images = _images()
    noise = seeded_noise(3, 16, 0, 1)
    with torch.no_grad():
        ours, ref = model(images, noise), _reference_loss(model, images, noise)
    assert ref.item() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_fixed_sincos_positions_match_mae_and_are_frozen() -> None:
    model = _mae()
    want = torch.from_numpy(_reference_pos_embed(32, 4)).float()
    torch.testing.assert_close(model.decoder.pos_embed[0], want)
    torch.testing.assert_close(
        model.encoder.pos_embed[0], torch.cat([torch.zeros(1, 48), sincos_2d(48, 4, 4)])
    )
    assert not model.encoder.pos_embed.requires_grad
    assert "decoder.pos_embed" not in model.state_dict()  # a fixed buffer, not a weight


def test_a_token_mask_and_the_noise_that_makes_it_give_the_same_loss() -> None:
    model = _mae().eval()
    images, noise = _images(), seeded_noise(3, 16, 5)
    shuffle = shuffle_from(noise, 0.75, (4, 4))
    mask = shuffle.mask.reshape(3, 4, 4).to(torch.uint8)
    assert mask.sum((1, 2)).tolist() == [12, 12, 12]
    torch.testing.assert_close(shuffle_from(mask, 0.75, (4, 4)).mask, shuffle.mask)
    with torch.no_grad():
        torch.testing.assert_close(model(images, mask), model(images, noise))


def test_the_encoder_sees_only_the_visible_tokens() -> None:
    model = _mae()
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    model(_images(), seeded_noise(3, 16, 0))
    assert seen == [1 + 4]  # class token + 25% of 16 patches


def test_seeded_noise_is_a_pure_function_of_its_words() -> None:
    a, b = seeded_noise(4, 64, 3, 9), seeded_noise(4, 64, 3, 9)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert ((a >= 0) & (a < 1)).all()
    assert not torch.equal(a, seeded_noise(4, 64, 3, 10))
    assert not torch.equal(a[0], a[1])  # per-sample noise


def test_gradients_reach_every_trainable_parameter() -> None:
    model = _mae()
    model(_images(), seeded_noise(3, 16, 0)).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.decoder.mask_token.grad.abs().sum() > 0


def test_norm_pix_off_regresses_raw_pixels() -> None:
    model = _mae(norm_pix_loss=False)
    images = _images()
    assert torch.equal(model.target(images)[0, 0, :3], images[0, :, 0, 0])


def test_errors_name_the_key() -> None:
    with pytest.raises(ModelError, match=r"MAE needs a ViT encoder .*not SwinTransformerV2"):
        MAE(SwinTransformerV2(img_size=32, window_size=4, depths=(1,), num_heads=(1,)))
    with pytest.raises(ModelError, match=r"mae.mask_ratio: must be in \(0, 1\), got 1.5"):
        MAE(_vit(), mask_ratio=1.5)
    with pytest.raises(ModelError, match=r"mae.mask_ratio: 0.97 keeps 0 of 16 tokens"):
        MAE(_vit(), mask_ratio=0.97)
    with pytest.raises(ModelError, match=r"mae.decoder_heads: must divide decoder_dim 32, got 5"):
        MAE(_vit(), decoder_dim=32, decoder_heads=5)
    with pytest.raises(ModelError, match=r"mae.decoder_depth: must be ≥ 1, got 0"):
        MAE(_vit(), decoder_depth=0)
    with pytest.raises(ModelError, match=r"mae.decoder_dim: must be a multiple of 4, got 30"):
        MAE(_vit(), decoder_dim=30, decoder_heads=3)
    model = _mae()
    uneven = torch.zeros(2, 4, 4, dtype=torch.uint8)
    uneven[0, 0, :3], uneven[1, 0, :2] = 1, 1
    with pytest.raises(ModelError, match=r"mask_ratio 0.75 masks 12 of 16 tokens .*has \[2, 3\]"):
        model(_images(2), uneven)
    with pytest.raises(
        ModelError,
        match=r"mae mask: expected a \(B, 4, 4\) token mask or \(B, 16\) noise, got \(2, 8, 8\)",
    ):
        model(_images(2), torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ModelError, match=r"mask_ratio 0.75 masks 12 of 16 tokens .*has \[16\]"):
        model(_images(2), torch.ones(2, 4, 4, dtype=torch.bool))


def test_bf16_autocast_gives_a_finite_loss_close_to_fp32() -> None:
    model = _mae().eval()
    images, noise = _images(), seeded_noise(3, 16, 2)
    with torch.no_grad():
        fp32 = model(images, noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images, noise)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


def test_runs_on_the_meta_device_without_reading_values_back() -> None:
    """No host read of the mask (a per-step stall on a GPU): FLOPs can be counted on meta."""
    with torch.device("meta"):
        model = MAE(_vit(), decoder_dim=32, decoder_depth=1, decoder_heads=4)
        images = torch.empty(2, 3, 32, 32)
        mask = torch.empty(2, 4, 4, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        model(images, mask).backward()
    assert counter.get_total_flops() > 0
