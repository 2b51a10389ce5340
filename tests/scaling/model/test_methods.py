"""The method registry: names, families, builders, masks (training and fixed validation)."""

from __future__ import annotations

import pytest
import torch

from scaling.config.recipes import LocalMIMConfig, MAEConfig
from scaling.config.schema import PretrainConfig
from scaling.errors import ModelError
from scaling.model.localmim import LocalMIMSwin, LocalMIMViT
from scaling.model.mae import MAE
from scaling.model.methods import (
    METHODS,
    build_method,
    flops_per_image,
    get_method,
    patch_masks,
)
from scaling.model.simmim import SimMIM, build_simmim
from scaling.model.sizes import get_spec

SIMMIM = PretrainConfig(image_size=32, mask_patch_size=8)
MAE_TINY = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=4)
LOCALMIM_TINY = LocalMIMConfig(decoder_dim=32, decoder_heads=4, mask_patch_size=8)
RECIPES = {"simmim": SIMMIM, "mae": MAE_TINY, "localmim": LOCALMIM_TINY}
PAIRS = [
    (method, model)
    for method in METHODS
    for model in ("vit-nano", "swinv2-nano")
    if get_spec(model).family in METHODS[method].families
]


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(ModelError, match=r"grid.methods: unknown method 'mea'; valid: simmim, mae"):
        get_method("mea")


def test_families_of_each_method() -> None:
    assert METHODS["mae"].families == ("vit",)
    assert set(METHODS["localmim"].families) == set(METHODS["simmim"].families) == {"vit", "swinv2"}
    with pytest.raises(ModelError, match=r"grid.methods\[1\]: mae needs a ViT encoder, got swinv2"):
        METHODS["mae"].check(get_spec("swinv2-nano"), "grid.methods[1]")
    with pytest.raises(ModelError, match="model: mae needs a ViT encoder, got swinv2-nano"):
        build_method("mae", "swinv2-nano", img_size=32, recipe=MAE_TINY)


@pytest.mark.parametrize(("method", "model"), PAIRS)
def test_each_method_builds_and_trains_on_its_own_masks(method: str, model: str) -> None:
    recipe = RECIPES[method]
    torch.manual_seed(0)
    module = build_method(method, model, img_size=32, recipe=recipe)
    expected = {
        "simmim": SimMIM,
        "mae": MAE,
        "localmim": LocalMIMViT if model == "vit-nano" else LocalMIMSwin,
    }[method]
    assert isinstance(module, expected)
    masks = get_method(method).masks(get_spec(model), recipe, 32)
    batch = torch.stack([torch.from_numpy(masks(0, 0, i)) for i in range(4)])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = module(images, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert module.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_simmim_through_the_registry_is_the_former_build() -> None:
    torch.manual_seed(3)
    a = build_method("simmim", "swinv2-nano", img_size=32, recipe=SIMMIM)
    torch.manual_seed(3)
    b = build_simmim("swinv2-nano", img_size=32)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    masks = get_method("simmim").masks(get_spec("swinv2-nano"), SIMMIM, 32)
    assert (masks.mask_patch_size, masks.mask_ratio) == (8, 0.6)


def test_mae_validation_masks_are_a_fixed_75_percent_of_patches_per_key() -> None:
    spec = get_spec("vit-nano")  # 32 px, patch 8: 16 tokens, 4 visible
    masks = get_method("mae").masks(spec, MAEConfig(), 32)
    assert masks.mask_patch_size == masks.model_patch_size == 8
    a, b, c = masks.val_mask(12345), masks.val_mask(12345), masks.val_mask(12346)
    assert a.shape == (4, 4) and int(a.sum()) == 12
    assert (a == b).all() and not (a == c).all()
    train = {masks(0, 0, i).tobytes() for i in range(20)}
    assert len(train) > 10  # per-sample random subsets


def test_patch_masks_refuse_a_ratio_that_keeps_nothing() -> None:
    with pytest.raises(ModelError, match=r"mae.mask_ratio: 0.95 keeps 0 of vit-nano's 16 tokens"):
        patch_masks(get_spec("vit-nano"), 32, 0.95, "mae")


def test_localmim_swin_masks_are_blocks_of_its_own_patch_size() -> None:
    spec = get_spec("swinv2-nano")
    masks = get_method("localmim").masks(spec, LocalMIMConfig(mask_patch_size=16), 32)
    assert (masks.mask_patch_size, masks.scale) == (16, 4)
    with pytest.raises(Exception, match=r"localmim.mask_patch_size: must divide image_size 32"):
        get_method("localmim").masks(spec, LocalMIMConfig(mask_patch_size=12), 32)


def test_mae_costs_less_than_simmim_on_the_same_vit() -> None:
    simmim = flops_per_image("simmim", "vit-nano", img_size=32, recipe=SIMMIM)
    mae = flops_per_image("mae", "vit-nano", img_size=32, recipe=MAE_TINY)
    assert 0 < mae < simmim
