"""Model registry: paper parameter counts on meta, size checks, fine-tuning transfer."""

from __future__ import annotations

import pytest
import torch

from scaling.errors import ModelError
from scaling.model.build import count_params_m, create_classifier, create_encoder
from scaling.model.simmim import build_simmim
from scaling.model.sizes import MODEL_SIZES, finetune_window, get_spec, validate_sizes

PAPER = [name for name, spec in MODEL_SIZES.items() if spec.params_m is not None]
TINY = [name for name, spec in MODEL_SIZES.items() if spec.tiny]


def test_registry_has_the_paper_family_and_tiny_flavours() -> None:
    assert {"swinv2-s", "swinv2-b", "swinv2-l", "swinv2-h", "swinv2-g", "vit-b"} <= set(PAPER)
    assert {"swinv2-nano", "swinv2-micro", "vit-nano"} <= set(TINY)


@pytest.mark.parametrize("name", PAPER)
def test_paper_parameter_counts_on_meta(name: str) -> None:
    spec = get_spec(name)
    assert count_params_m(name) == pytest.approx(spec.params_m, rel=0.005)


@pytest.mark.parametrize("name", [n for n in MODEL_SIZES if n.startswith("swinv2-")])
def test_swinv2_layout_is_the_papers(name: str) -> None:
    spec = get_spec(name)
    assert all(spec.embed_dim * 2**i // h == 32 for i, h in enumerate(spec.num_heads))
    if not spec.tiny:
        assert (spec.depths, spec.window_size, spec.patch_size, spec.img_size) == (
            (2, 2, 18, 2),
            12,
            4,
            192,
        )
        assert spec.encoder_stride == 32


@pytest.mark.parametrize("name", list(MODEL_SIZES))
def test_every_size_fits_its_default_image(name: str) -> None:
    spec = get_spec(name)
    assert validate_sizes(name, spec.img_size) is spec


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(
        ModelError, match=r"model: unknown model size 'swinv2-xl'; valid: .*swinv2-b"
    ):
        get_spec("swinv2-xl")
    assert ModelError.exit_code == 2


@pytest.mark.parametrize(
    ("name", "img_size", "message"),
    [
        ("swinv2-nano", 48, r"pretrain\.image_size: 48 is not divisible by swinv2-nano's encoder "),
        ("swinv2-b", 224, r"pretrain\.image_size: 224 .* swinv2-b's window×patch 12×4=48 "),
        ("swinv2-micro", 96, r"window×patch×2\^1 8×4×2=64 \(stage 1 has a 12×12 token grid"),
        ("vit-nano", 60, r"pretrain\.image_size: 60 is not divisible by vit-nano's patch size 8"),
    ],
)
def test_bad_image_sizes_name_the_key(name: str, img_size: int, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        validate_sizes(name, img_size)
    with pytest.raises(ModelError, match=message):
        create_encoder(name, img_size=img_size)


def test_finetune_window_keeps_the_ratio() -> None:
    b = get_spec("swinv2-b")
    assert finetune_window(b, 224, 192) == 14
    assert finetune_window(b, 384, 192) == 24
    with pytest.raises(ModelError, match=r"finetune\.image_size: 200 does not scale swinv2-b's"):
        finetune_window(b, 200, 192)


def test_swinv2_b_192_to_224_on_meta() -> None:
    with torch.device("meta"):
        encoder = create_encoder("swinv2-b", img_size=192)
        model = create_classifier(
            "swinv2-b",
            num_classes=1000,
            img_size=224,
            encoder_state=encoder.state_dict(),
            pretrain_img_size=192,
        )
        logits = model(torch.empty(2, 3, 224, 224))
    assert logits.shape == (2, 1000)
    # the released fine-tuning config: window 14, pretrained windows 12-12-12-6
    windows = [stage.blocks[0].window_size for stage in model.layers]
    pretrained = [stage.blocks[0].attn.pretrained_window_size for stage in model.layers]
    assert windows == [(14, 14)] * 3 + [(7, 7)]
    assert pretrained == [(12, 12)] * 3 + [(6, 6)]
    assert model.layers[0].blocks[1].attn_mask.shape == (16, 196, 196)


def _tiny_state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    spec = get_spec(name)
    return build_simmim(name, img_size=spec.img_size).state_dict()


@pytest.mark.parametrize("name", ["swinv2-nano", "vit-nano"])
def test_classifier_at_the_pretrain_size_reproduces_the_encoder(name: str) -> None:
    state = _tiny_state(name)  # a whole SimMIM state dict: encoder + mask token + decoder
    encoder = create_encoder(name, img_size=64)
    encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    model = create_classifier(
        name, num_classes=5, img_size=64, drop_path_rate=0.0, encoder_state=state
    )
    x = torch.randn(2, 3, 64, 64)
    encoder.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), encoder.forward_features(x))
        assert model(x).shape == (2, 5)


def test_swinv2_finetune_resolution_transfers_the_position_bias() -> None:
    state = _tiny_state("swinv2-nano")
    pre = create_encoder("swinv2-nano", img_size=64)
    model = create_classifier(
        "swinv2-nano", num_classes=3, img_size=96, encoder_state=state, pretrain_img_size=64
    )
    assert [s.blocks[0].window_size[0] for s in model.layers] == [6, 6, 6, 3]
    # offsets seen in pre-training (±3 at window 4) keep their log-spaced
    # coordinates, so the cpb MLP gives them the same bias; larger ones extrapolate
    for stage in (0, 1):
        before = pre.layers[stage].blocks[0].attn.relative_coords_table  # (1, 7, 7, 2)
        after = model.layers[stage].blocks[0].attn.relative_coords_table  # (1, 11, 11, 2)
        torch.testing.assert_close(after[:, 2:-2, 2:-2], before)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 3)


def test_vit_finetune_resolution_resamples_the_position_embedding() -> None:
    model = create_classifier(
        "vit-nano",
        num_classes=3,
        img_size=96,
        encoder_state=_tiny_state("vit-nano"),
        pretrain_img_size=64,
    )
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 96)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 3)


def test_a_foreign_encoder_state_is_refused() -> None:
    with pytest.raises(ModelError, match="finetune: the pre-trained encoder does not fit"):
        create_classifier(
            "swinv2-micro", num_classes=3, img_size=64, encoder_state=_tiny_state("swinv2-nano")
        )
    state = _tiny_state("vit-nano")
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"unexpected \['extra.weight'\]"):
        create_classifier("vit-nano", num_classes=3, img_size=64, encoder_state=state)


@pytest.mark.parametrize(
    ("mask_patch", "message"),
    [
        (24, r"pretrain\.mask_patch_size: must divide image_size 64, got 24"),
        (4, r"pretrain\.mask_patch_size: must be a multiple of vit-nano's patch size 8, got 4"),
    ],
)
def test_mask_geometry_is_one_rule(mask_patch: int, message: str) -> None:
    """The same rule, with the same message, from the study check and the mask generator."""
    from scaling.data.masking import MaskConfigError, MaskGenerator, check_mask_geometry

    with pytest.raises(MaskConfigError, match=message):
        check_mask_geometry(
            image_size=64,
            mask_patch_size=mask_patch,
            model_patch_size=8,
            mask_ratio=0.6,
            section="pretrain",
            model="vit-nano",
        )
    with pytest.raises(
        MaskConfigError, match=message.split(": ", 1)[1].replace("vit-nano", "the model")
    ):
        MaskGenerator(input_size=64, mask_patch_size=mask_patch, model_patch_size=8)
