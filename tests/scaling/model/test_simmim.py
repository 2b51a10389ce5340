"""SimMIM: the loss against direct computations, masking, gradients, autocast/compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scaling.data.masking import MaskGenerator
from scaling.errors import ModelError
from scaling.model.build import create_encoder
from scaling.model.simmim import SimMIM, build_simmim, masked_l1_loss, norm_targets, upsample_mask
from scaling.model.sizes import MODEL_SIZES, get_spec

TINY = [name for name, spec in MODEL_SIZES.items() if spec.tiny]


def _batch(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    spec = get_spec(name)
    gen = MaskGenerator(
        input_size=spec.img_size, mask_patch_size=16, model_patch_size=spec.patch_size
    )
    images = torch.randn(
        batch, 3, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(seed)
    )
    masks = torch.from_numpy(np.stack([gen(seed, 0, i) for i in range(batch)]))
    return images, masks  # (B, 3, H, W) float, (B, H/p, W/p) uint8


def _model(name: str, **kwargs: object) -> SimMIM:
    torch.manual_seed(0)
    return build_simmim(name, img_size=get_spec(name).img_size, **kwargs)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward_reaches_every_parameter(name: str) -> None:
    model = _model(name, drop_path_rate=0.1)
    images, masks = _batch(name)
    loss = model(images, masks)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
    assert model.mask_token.grad.abs().sum() > 0
    assert model.decoder[0].weight.grad.abs().sum() > 0
    assert model.encoder.num_features == get_spec(name).num_features


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_loss_equals_a_direct_computation(name: str) -> None:
    model = _model(name).eval()
    images, masks = _batch(name)
    spec = get_spec(name)
    with torch.no_grad():
        loss = model(images, masks)
        rec = model.reconstruct(images, masks)
        features = model._encode(model.encoder, model.embed(images, masks))  # (B, C, h, w)
    s = spec.encoder_stride
    # decoder: pixel (i, j) of channel c is output c·s² + (i % s)·s + (j % s) of a 1×1 conv
    w, b = model.decoder[0].weight[:, :, 0, 0], model.decoder[0].bias
    for bi, c, i, j in [(0, 0, 0, 0), (1, 2, s + 3, 2 * s - 1), (0, 1, 7, s + 5)]:
        out = w @ features[bi, :, i // s, j // s] + b
        torch.testing.assert_close(rec[bi, c, i, j], out[c * s * s + (i % s) * s + j % s])
    # loss: mean |x̂ − x| over masked pixels and the three channels
    pixel = masks.numpy().repeat(spec.patch_size, 1).repeat(spec.patch_size, 2).astype(bool)
    diff = (rec - images).abs().numpy().transpose(0, 2, 3, 1)  # (B, H, W, 3)
    expected = diff[pixel].sum() / (pixel.sum() * 3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_masked_l1_loss_by_hand() -> None:
    target = torch.full((1, 3, 4, 4), 2.0)
    target[:, :, :2] = 100.0  # unmasked rows: must not count
    mask = torch.zeros(1, 1, 4, 4)
    mask[:, :, 2:] = 1  # 8 masked pixels
    loss = masked_l1_loss(torch.zeros(1, 3, 4, 4), target, mask)
    assert loss.item() == pytest.approx(2.0 * 8 / (8 + 1e-5))


def test_unmasked_pixels_get_no_gradient() -> None:
    model = _model("swinv2-nano")
    images, masks = _batch("swinv2-nano")
    rec = model.reconstruct(images, masks).detach().requires_grad_()
    target = images.clone().requires_grad_()
    model.loss(rec, target, masks).backward()
    pixel = upsample_mask(masks, 4).bool().expand_as(images)  # (B, 3, H, W)
    assert (rec.grad[~pixel] == 0).all() and (target.grad[~pixel] == 0).all()
    assert (rec.grad[pixel] != 0).all()
    # with window-normalised targets the reconstruction's unmasked pixels stay out too
    normed = _model("swinv2-nano", norm_target=True, norm_target_window=5)
    rec.grad = None
    normed.loss(rec, images, masks).backward()
    assert (rec.grad[~pixel] == 0).all()


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_mask_token_replaces_masked_tokens(name: str) -> None:
    model = _model(name).eval()
    images, masks = _batch(name)
    with torch.no_grad():
        tokens = model.embed(images, masks)
        plain = model.encoder.patch_embed(images)
    flat, plain = tokens.reshape(-1, tokens.shape[-1]), plain.reshape(-1, plain.shape[-1])
    masked = masks.reshape(-1).bool()
    assert masked.any() and (~masked).any()
    assert (flat[masked] == model.mask_token.reshape(1, -1)).all()
    assert torch.equal(flat[~masked], plain[~masked])
    # what lies under masked tokens cannot reach the reconstruction
    scribbled = images + 5.0 * upsample_mask(masks, get_spec(name).patch_size)
    with torch.no_grad():
        torch.testing.assert_close(
            model.reconstruct(scribbled, masks), model.reconstruct(images, masks)
        )


def _naive_norm(x: torch.Tensor, k: int) -> torch.Tensor:
    out, r = torch.empty_like(x), k // 2
    _, _, h, w = x.shape
    for b, c, i, j in np.ndindex(*x.shape):
        win = x[b, c, max(0, i - r) : min(h, i + r + 1), max(0, j - r) : min(w, j + r + 1)]
        out[b, c, i, j] = (x[b, c, i, j] - win.mean()) / (win.var(unbiased=True) + 1e-6).sqrt()
    return out


def test_norm_targets_match_a_per_pixel_loop() -> None:
    x = torch.rand(1, 2, 6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = norm_targets(x.float(), 5).double()
    torch.testing.assert_close(got, _naive_norm(x, 5), atol=2e-4, rtol=1e-4)
    with pytest.raises(ModelError, match=r"pretrain\.norm_target_window: must be odd, got 4"):
        norm_targets(x, 4)


def test_norm_target_loss_uses_the_normalised_image() -> None:
    model = _model("swinv2-nano", norm_target=True).eval()  # 47 px windows on 64 px
    images, masks = _batch("swinv2-nano")
    with torch.no_grad():
        rec = model.reconstruct(images, masks)
        expected = masked_l1_loss(rec, norm_targets(images, 47), upsample_mask(masks, 4))
        torch.testing.assert_close(model(images, masks), expected)
    assert not _model("swinv2-nano").norm_target


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_gradient_checkpointing_gives_the_same_gradients(name: str) -> None:
    model = _model(name)
    images, masks = _batch(name)
    model(images, masks).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.encoder.set_grad_checkpointing(True)
    model(images, masks).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], msg=n)


def test_only_timm_swinv2_and_vit_encoders() -> None:
    with pytest.raises(TypeError, match="SimMIM supports SwinTransformerV2, VisionTransformer"):
        SimMIM(torch.nn.Linear(2, 2))
    model = SimMIM(create_encoder("swinv2-nano", img_size=64))
    assert (model.encoder_stride, model.patch_size) == (32, 4)


def test_bf16_autocast_and_channels_last() -> None:
    model = _model("swinv2-nano").eval()
    images, masks = _batch("swinv2-nano")
    with torch.no_grad():
        reference = model(images, masks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, masks)
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(reference.item(), rel=0.05)
        model = model.to(memory_format=torch.channels_last)
        cl = model(images.to(memory_format=torch.channels_last), masks)
    torch.testing.assert_close(cl, reference, rtol=1e-4, atol=1e-5)


def test_compiles_without_graph_breaks() -> None:
    model = _model("vit-nano").eval()
    images, masks = _batch("vit-nano")
    # dynamo capture (the part that breaks graphs) without inductor's codegen cost
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    loss = compiled(images, masks)
    torch.testing.assert_close(loss, model(images, masks))
    loss.backward()
    assert model.mask_token.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_compiled() -> None:
    model = _model("swinv2-nano").cuda().to(memory_format=torch.channels_last)
    images, masks = _batch("swinv2-nano", batch=8)
    images = images.cuda().to(memory_format=torch.channels_last)
    masks = masks.cuda()
    reference = model(images, masks)
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(images, masks)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_upsample_mask_shapes() -> None:
    mask = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.uint8)  # (1, 2, 2)
    up = upsample_mask(mask, 3)
    assert up.shape == (1, 1, 6, 6) and up.dtype == torch.uint8
    assert torch.equal(
        up[0, 0], torch.from_numpy(np.kron([[1, 0], [0, 1]], np.ones((3, 3)))).to(torch.uint8)
    )
    assert F.avg_pool2d(up.float(), 3).squeeze().tolist() == [[1.0, 0.0], [0.0, 1.0]]
