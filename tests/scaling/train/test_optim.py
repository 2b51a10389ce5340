"""Optimizers: the exact no-decay set of pre-training, layer-wise lr decay of fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaling.model.build import create_classifier
from scaling.model.simmim import build_simmim
from scaling.train.optim import build_finetune_optimizer, build_pretrain_optimizer, no_decay_names


def _expected_no_decay(model: nn.Module) -> set[str]:
    """Written from module types, independently of the name rules under test."""
    names = {"mask_token"}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(module, nn.LayerNorm):
            names |= {prefix + "weight", prefix + "bias"}
        elif isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
            names.add(prefix + "bias")
        if mname.endswith("cpb_mlp"):  # the whole continuous position-bias MLP
            names |= {prefix + n for n, _ in module.named_parameters()}
        if mname.endswith(".attn") and hasattr(module, "logit_scale"):
            names |= {prefix + "logit_scale", prefix + "q_bias", prefix + "v_bias"}
    for special in ("cls_token", "pos_embed"):
        if hasattr(getattr(model, "encoder", None), special):
            names.add(f"encoder.{special}")
    return names


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_pretrain_no_decay_set_is_exact(name: str) -> None:
    model = build_simmim(name, img_size=64)
    expected = _expected_no_decay(model)
    assert no_decay_names(model) == expected
    optimizer = build_pretrain_optimizer(model, lr=1e-4)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["betas"] == (0.9, 0.999) and not decay["fused"]
    ids = {id(p): n for n, p in model.named_parameters()}
    assert {ids[id(p)] for p in no_decay["params"]} == expected
    assert len(decay["params"]) + len(no_decay["params"]) == len(ids)
    # everything decayed is a matrix or a kernel
    assert all(p.ndim >= 2 for p in decay["params"])


def test_swinv2_names_a_1d_rule_alone_would_decay() -> None:
    model = build_simmim("swinv2-nano", img_size=64)
    exempt = no_decay_names(model)
    multi_d = {n for n, p in model.named_parameters() if n in exempt and p.ndim > 1}
    # the 3-D logit scales, the 2-D cpb MLP weights and the (1, 1, C) mask token
    assert any(n.endswith("logit_scale") for n in multi_d)
    assert any(".cpb_mlp.2.weight" in n for n in multi_d)
    assert "mask_token" in multi_d


def test_the_released_decay_set_decays_what_the_released_code_decays() -> None:
    """``weight_decay_set = "released"``: the released SimMIM code matches "encoder.cpb_mlp"
    and "encoder.logit_scale" as substrings of the full names, which never match, so it
    decays the cpb MLP's weight matrices and the (heads, 1, 1) logit scales; it still exempts
    1-D tensors and the exact names (mask token, position embeddings)."""
    model = build_simmim("swinv2-nano", img_size=64)
    corrected, released = no_decay_names(model), no_decay_names(model, "released")
    moved = corrected - released
    assert moved and released < corrected
    assert all(n.endswith("logit_scale") or ".cpb_mlp." in n for n in moved), moved
    shapes = {n: p.ndim for n, p in model.named_parameters()}
    assert all(shapes[n] > 1 for n in moved)  # what a 1-D rule alone would decay
    assert "mask_token" in released
    optimizer = build_pretrain_optimizer(model, lr=1e-4, decay_set="released")
    ids = {id(p): n for n, p in model.named_parameters()}
    assert {ids[id(p)] for p in optimizer.param_groups[1]["params"]} == released
    vit = build_simmim("vit-nano", img_size=64)
    assert no_decay_names(vit, "released") == no_decay_names(vit)  # no cpb MLP in a ViT


def _lr_scales(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}


def test_swinv2_layer_decay_is_monotone() -> None:
    model = create_classifier("swinv2-nano", num_classes=4, img_size=64)
    optimizer = build_finetune_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = _lr_scales(optimizer, model)
    # (stage, block) order; a stage's downsampling goes with its first block
    order = [scales["patch_embed.proj.weight"]]
    for i, stage in enumerate(model.layers):
        if i > 0:
            assert (
                scales[f"layers.{i}.downsample.reduction.weight"]
                == scales[f"layers.{i}.blocks.0.mlp.fc1.weight"]
            )
        order += [scales[f"layers.{i}.blocks.{j}.mlp.fc1.weight"] for j in range(len(stage.blocks))]
    order.append(scales["head.fc.weight"])
    n = len(order)  # stem, every block, head: scales 0.75^(n-1) … 0.75, 1
    assert order == pytest.approx([0.75 ** (n - 1 - k) for k in range(n)])
    assert scales["norm.weight"] == order[-2]  # timm keeps the final norm with the last block
    # timm keeps SwinV2's cpb MLPs and logit scales out of weight decay too
    decay = {p: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for pname, param in model.named_parameters():
        if "cpb_mlp" in pname or "logit_scale" in pname or param.ndim <= 1:
            assert decay[param] == 0.0, pname


def test_vit_layer_decay_is_monotone() -> None:
    model = create_classifier("vit-nano", num_classes=4, img_size=64)
    optimizer = build_finetune_optimizer(model, lr=1e-3, layer_decay=0.75)
    scales = _lr_scales(optimizer, model)
    order = [scales["pos_embed"], *(scales[f"blocks.{i}.attn.qkv.weight"] for i in range(4))]
    order.append(scales["head.weight"])
    assert order == pytest.approx([0.75**k for k in range(5, -1, -1)])
    assert scales["cls_token"] == scales["patch_embed.proj.weight"] == order[0]
    assert scales["norm.weight"] == order[-2]
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
