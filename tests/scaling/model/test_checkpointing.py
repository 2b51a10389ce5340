"""Activation checkpointing on SimMIM's encode path: exact, and it does save memory.

Tolerance: none. On the CPU the recomputed forward runs the same kernels on the same
inputs, and torch's non-reentrant checkpoint restores the RNG (drop path) and autocast
state, so losses and gradients are bit-identical to the plain backward (``assert_close``
with rtol = atol = 0). On CUDA the same holds up to nondeterministic kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scaling.data.masking import MaskGenerator
from scaling.errors import ModelError
from scaling.model.family import CHECKPOINTING
from scaling.model.simmim import build_simmim
from scaling.model.sizes import get_spec

MODELS = ["swinv2-nano", "vit-nano"]


def _batch(name: str, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    spec = get_spec(name)
    gen = MaskGenerator(
        input_size=spec.img_size, mask_patch_size=16, model_patch_size=spec.patch_size
    )
    images = torch.randn(batch, 3, spec.img_size, spec.img_size, generator=torch.Generator())
    masks = torch.from_numpy(np.stack([gen(0, 0, i) for i in range(batch)]))
    return images, masks


def _model(name: str, mode: str, drop_path: float = 0.3) -> torch.nn.Module:
    """A SimMIM model whose every residual branch counts: SwinV2 starts its post-norms at
    zero (timm's res-post-norm init), which would hide drop path from the loss."""
    torch.manual_seed(0)
    model = build_simmim(name, img_size=get_spec(name).img_size, drop_path_rate=drop_path)
    model.checkpointing = mode
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _loss_and_grads(
    name: str, mode: str, amp: torch.dtype | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _model(name, mode)
    images, masks = _batch(name)
    torch.manual_seed(1)  # the drop-path draws
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        loss = model(images, masks)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _saved_bytes(name: str, mode: str) -> int:
    """Bytes autograd keeps from the forward for the backward (what checkpointing trims)."""
    torch.manual_seed(0)
    model = build_simmim(name, img_size=get_spec(name).img_size, checkpointing=mode)
    images, masks = _batch(name, batch=2)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t.untyped_storage())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(images, masks)
    loss.backward()
    return sum(saved.values())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["block", "stage"])
def test_checkpointed_loss_and_gradients_are_bit_identical(name: str, mode: str) -> None:
    loss, grads = _loss_and_grads(name, "none")
    loss_ck, grads_ck = _loss_and_grads(name, mode)
    assert loss_ck.item() == loss.item()
    assert grads_ck.keys() == grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(grads_ck[n], g, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_under_bf16_autocast_is_bit_identical(name: str) -> None:
    loss, grads = _loss_and_grads(name, "none", torch.bfloat16)
    loss_ck, grads_ck = _loss_and_grads(name, "block", torch.bfloat16)
    assert loss_ck.item() == loss.item()
    for n, g in grads.items():
        torch.testing.assert_close(grads_ck[n], g, rtol=0, atol=0, msg=n)


def test_drop_path_draws_are_replayed_not_repeated() -> None:
    """A second seed gives another loss: the equality above is not drop path switched off."""
    model = _model("swinv2-nano", "block")
    images, masks = _batch("swinv2-nano")
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(model(images, masks).item())
    assert losses[0] != losses[1]


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_keeps_less_for_the_backward(name: str) -> None:
    plain, block, stage = (_saved_bytes(name, mode) for mode in CHECKPOINTING)
    assert block < 0.6 * plain, (plain, block)
    assert stage < 0.6 * plain, (plain, stage)


def test_no_grad_runs_plainly() -> None:
    torch.manual_seed(0)
    model = build_simmim("vit-nano", img_size=64, checkpointing="block").eval()
    images, masks = _batch("vit-nano")
    with torch.no_grad():
        checkpointed = model(images, masks)
        model.checkpointing = "none"
        assert model(images, masks).item() == checkpointed.item()


def test_unknown_mode_names_the_key() -> None:
    with pytest.raises(ModelError, match=r"pretrain.activation_checkpointing: must be one of"):
        build_simmim("vit-nano", img_size=64, checkpointing="layer")


def test_set_checkpointing_on_simmim_and_a_classifier() -> None:
    from scaling.model.build import create_classifier
    from scaling.model.simmim import set_checkpointing, shard_units

    model = build_simmim("swinv2-nano", img_size=64)
    set_checkpointing(model, "stage")
    assert model.checkpointing == "stage"
    assert len(shard_units(model)) == sum(get_spec("swinv2-nano").depths)
    classifier = create_classifier("vit-nano", num_classes=3, img_size=64)
    set_checkpointing(classifier, "block")
    assert classifier.grad_checkpointing
    assert shard_units(classifier) == list(classifier.blocks)
    with pytest.raises(ModelError, match=r"pretrain.activation_checkpointing: must be one of"):
        set_checkpointing(classifier, "all")
