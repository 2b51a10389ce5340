"""FLOPs from FlopCounterMode on the meta device."""

from __future__ import annotations

import pytest

from scaling.errors import UserError
from scaling.model.flops import forward_flops, pretrain_flops_per_image


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_train_step_is_about_three_forwards(name: str) -> None:
    fwd = forward_flops(name, img_size=64, mask_patch_size=16)
    step = pretrain_flops_per_image(name, img_size=64, mask_patch_size=16)
    assert fwd > 0
    # backward ≈ 2× forward, a little less: the images need no gradient
    assert 2.9 * fwd < step <= 3.0 * fwd


def test_grows_with_model_and_image_size() -> None:
    nano = pretrain_flops_per_image("swinv2-nano", img_size=64, mask_patch_size=16)
    micro = pretrain_flops_per_image("swinv2-micro", img_size=64, mask_patch_size=16)
    larger = pretrain_flops_per_image("swinv2-nano", img_size=128, mask_patch_size=16)
    assert nano < micro and 3.5 * nano < larger < 4.5 * nano


def test_swinv2_b_matches_timm_published_macs() -> None:
    # timm lists swinv2_base_window12_192 at 11.9 GMACs; SimMIM adds a 1×1 conv
    # 1024 → 32²·3 on the 6×6 feature map
    decoder = 2 * 1024 * 3072 * 36
    assert forward_flops("swinv2-b", img_size=192) == pytest.approx(2 * 11.9e9 + decoder, rel=0.02)


def test_bad_sizes_fail_before_counting() -> None:
    with pytest.raises(UserError, match=r"pretrain\.mask_patch_size: must divide image_size 64"):
        forward_flops("vit-nano", img_size=64, mask_patch_size=48)
