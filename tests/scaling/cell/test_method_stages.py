"""Pre-training per method on the demo data: MAE and LocalMIM cells through the real stage."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from scaling.cell.context import load_checkpoint
from scaling.cell.pretrain import validation_loss
from scaling.cell.run import run_stage
from scaling.config.identity import manifest_digests, pretrain_id, pretrain_identity
from scaling.config.recipes import LocalMIMConfig, MAEConfig
from scaling.data.pretrain import build_val_loader
from scaling.model.methods import build_method, get_method
from scaling.model.sizes import get_spec
from scaling.study.store import ResultStore

MAE_TINY = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=4)
LOCALMIM_TINY = LocalMIMConfig(decoder_dim=32, decoder_heads=4, mask_patch_size=8)


def _cell(tiny_cell, method: str, model: str):
    cell = tiny_cell(model=model, iterations=4, finetune={"enabled": False})
    return dataclasses.replace(cell, method=method, mae=MAE_TINY, localmim=LOCALMIM_TINY)


@pytest.mark.parametrize(
    ("method", "model"),
    [("mae", "vit-nano"), ("localmim", "vit-nano"), ("localmim", "swinv2-nano")],
)
def test_a_method_pretrains_and_scores_the_fixed_val_set(
    tiny_cell, tmp_path: Path, method: str, model: str
) -> None:
    cell = _cell(tiny_cell, method, model)
    store = ResultStore(str(tmp_path / "store"))
    pid = pretrain_id(cell, manifest_digests(cell))
    row = run_stage("pretrain", pid, cell, store)
    assert row["method"] == method and row["status"] == "complete"
    assert math.isfinite(row["val_loss"]) and math.isfinite(row["train_loss"])
    assert row["mask_ratio"] == 0.75 and row["pretrain_flops"] > 0
    # the encoder is stored; its module, rebuilt around it, scores the fixed val set the same
    # way twice: every image's mask comes from its manifest key (MAE: 75% of the patches)
    state = load_checkpoint(store, f"stages/pretrain/{pid}/checkpoint.pt")
    torch.manual_seed(0)
    module = build_method(method, model, img_size=32, recipe=cell.recipe)
    module.encoder.load_state_dict(state["state"]["encoder"])
    masks = get_method(method).masks(get_spec(model), cell.recipe, 32)
    loader = build_val_loader(
        manifest=cell.data_config.manifest("demo-val"), root=cell.data_config.root,
        image_size=32, mask=masks, batch_size=16, num_workers=0, limit=64,
    )  # fmt: skip
    keys = loader.loader.dataset.manifest.keys[loader.loader.dataset.indices]
    _, batch_masks = next(iter(loader))
    for i in range(len(batch_masks)):
        assert torch.equal(batch_masks[i], torch.from_numpy(masks.val_mask(int(keys[i]))))
    tokens = (32 // get_spec(model).patch_size) ** 2
    if model == "vit-nano":
        assert int(batch_masks[0].sum()) == tokens - int(tokens * 0.25)
    cpu = torch.device("cpu")
    assert validation_loss(module, loader, cpu, None) == validation_loss(module, loader, cpu, None)


def test_method_enters_the_identity_and_simmim_keeps_its_own(tiny_cell) -> None:
    simmim = tiny_cell(model="vit-nano", finetune={"enabled": False})
    mae = dataclasses.replace(simmim, method="mae", mae=MAE_TINY)
    digests = manifest_digests(simmim)
    ident = pretrain_identity(simmim, digests)
    assert "method" not in ident and "method_recipe" not in ident
    assert "mask_ratio" in ident["recipe"]
    ident = pretrain_identity(mae, digests)
    assert ident["method"] == "mae" and ident["method_recipe"]["decoder_dim"] == 32
    assert "mask_ratio" not in ident["recipe"]  # SimMIM's mask fields leave MAE's id
    assert pretrain_id(mae, digests) != pretrain_id(simmim, digests)
    wider = dataclasses.replace(mae, mae=dataclasses.replace(MAE_TINY, decoder_dim=64))
    assert pretrain_id(wider, digests) != pretrain_id(mae, digests)
    other_simmim_mask = dataclasses.replace(
        mae, pretrain=dataclasses.replace(mae.pretrain, mask_ratio=0.5)
    )
    assert pretrain_id(other_simmim_mask, digests) == pretrain_id(mae, digests)


def test_diagnostics_stage_reads_the_encoder_and_writes_long_rows(tiny_cell, tmp_path) -> None:
    from scaling.cell.diagnose import STAGE_COLUMNS
    from scaling.config.identity import diagnostics_identity, identity_hash
    from scaling.config.recipes import DiagnosticsConfig

    cell = _cell(tiny_cell, "mae", "vit-nano")
    cell = dataclasses.replace(
        cell, diagnostics=DiagnosticsConfig(enabled=True, images=12, batch_size=8)
    )
    store = ResultStore(str(tmp_path / "store"))
    digests = manifest_digests(cell)
    pid = pretrain_id(cell, digests)
    did = identity_hash(diagnostics_identity(cell, pid, digests))
    with pytest.raises(Exception, match=f"pre-training stage {pid} has not finished"):
        run_stage("diagnostics", did, cell, store, pretrain_id=pid)
    run_stage("pretrain", pid, cell, store)
    before = store.read_bytes(f"stages/pretrain/{pid}/checkpoint.pt")
    row = run_stage("diagnostics", did, cell, store, pretrain_id=pid)
    assert row["status"] == "complete" and row["images"] == 12 and row["pretrain_id"] == pid
    assert store.stage_complete("diagnostics", did)
    assert store.read_bytes(f"stages/pretrain/{pid}/checkpoint.pt") == before  # not re-run
    table = store.read_table(f"stages/diagnostics/{did}/diagnostics.parquet").to_pandas()
    assert list(table.columns) == list(STAGE_COLUMNS)
    per_head = table[(table.metric == "distance_px")]
    assert sorted(set(per_head.layer)) == [0, 1, 2, 3]
    assert sorted(set(per_head["head"])) == [0, 1, 2]
    summary = table[table.layer == -1].set_index("metric").value
    assert {"attn_distance_px", "attn_entropy", "head_kl", "cka_first_last", "qk_nmi"} <= set(
        summary.index
    )
    assert summary["attn_distance_px"] == pytest.approx(per_head.value.mean())
    cka = table[table.metric == "cka"]
    assert cka[cka.layer == cka.other].value.to_numpy() == pytest.approx(1.0)


def test_batched_diagnostics_weigh_each_batch_by_its_images() -> None:
    from timm.models.vision_transformer import VisionTransformer

    from scaling.cell.diagnose import mean_diagnostics
    from scaling.model.diagnostics import diagnose

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0
    ).eval()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    whole = diagnose(vit, images)
    parts = mean_diagnostics([diagnose(vit, images[:4]), diagnose(vit, images[4:])], [4.0, 2.0])
    for name in ("distance_px", "entropy"):
        assert torch.tensor(getattr(parts, name)) == pytest.approx(
            torch.tensor(getattr(whole, name)), rel=1e-5
        )
