"""Take a study's encoders away: each pre-trained encoder (and fine-tuned classifier) as
safetensors plus the config timm needs to build and load it.

For every selected cell, ``<out>/<cell_id>/encoder/`` and, when the cell was fine-tuned,
``<out>/<cell_id>/classifier/`` hold ``model.safetensors`` and ``config.json``::

    cfg = json.load(open(d / "config.json"))
    model = timm.create_model(
        cfg["architecture"], pretrained=True,
        pretrained_cfg_overlay={**cfg["pretrained_cfg"], "file": str(d / "model.safetensors")},
        **cfg["model_args"],
    )

``architecture`` is a registered timm name of the size's family (its class and default
config); ``model_args`` are the keyword arguments mimscale's family builder passes (sizes
outside timm's list, windows, pooling), so the model timm builds is the one that was
trained, and the weights load strictly. ``mimscale`` in the config names the stages,
data, length and losses the weights come from. ``index.json`` lists what was written.
Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ExportError(UserError):
    """Nothing to export, or a selection that names nothing."""


def _swinv2_args(spec: Any, img_size: int, window: int, pretrained: tuple[int, ...]) -> dict:
    return {
        "img_size": img_size,
        "patch_size": spec.patch_size,
        "embed_dim": spec.embed_dim,
        "depths": list(spec.depths),
        "num_heads": list(spec.num_heads),
        "window_size": window or spec.window_size,
        "pretrained_window_sizes": list(pretrained),
    }


def _vit_args(spec: Any, img_size: int, window: int, pretrained: tuple[int, ...]) -> dict:
    return {
        "img_size": img_size,
        "patch_size": spec.patch_size,
        "embed_dim": spec.embed_dim,
        "depth": spec.depths[0],
        "num_heads": spec.num_heads[0],
        "qkv_bias": True,
        "global_pool": "avg",
        "fc_norm": False,
    }


TIMM_FAMILIES: dict[str, tuple[str, Callable[..., dict]]] = {
    "swinv2": ("swinv2_tiny_window8_256", _swinv2_args),
    "vit": ("vit_base_patch16_224", _vit_args),
}
"""Family → (a timm architecture of its class, the keyword arguments of mimscale's builder)."""


def timm_config(
    model: str, *, img_size: int, num_classes: int = 0, pretrain_img_size: int | None = None
) -> dict[str, Any]:
    """``architecture``, ``model_args`` and ``pretrained_cfg`` of a size at ``img_size``;
    a classifier (``num_classes`` > 0) gets the windows fine-tuning used."""
    from scaling.model.sizes import get_spec

    spec = get_spec(model)
    if spec.family not in TIMM_FAMILIES:
        raise ExportError(f"{model}: no timm export for family {spec.family!r}")
    arch, args_of = TIMM_FAMILIES[spec.family]
    family = spec.family_record
    window, pretrained = 0, (0,) * len(spec.depths)
    if num_classes:
        window = family.finetune_window(spec, img_size, pretrain_img_size or img_size)
        pretrained = family.pretrained_windows(spec, pretrain_img_size or img_size)
    model_args = {**args_of(spec, img_size, window, pretrained), "num_classes": num_classes}
    return {
        "architecture": arch,
        "num_classes": num_classes,
        "model_args": model_args,
        "pretrained_cfg": {
            "num_classes": num_classes,
            "input_size": [3, img_size, img_size],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "bicubic",
        },
    }


def _write(out: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _result_state(store: Any, rel: str, stage_id: str) -> dict[str, Any]:
    from scaling.cell.context import load_checkpoint

    ckpt = load_checkpoint(store, rel)  # a damaged one falls back to the previous one
    if ckpt is not None and "result" in ckpt:
        return ckpt
    if store.stage_complete(rel.split("/")[1], stage_id):
        raise ExportError(
            f"stage {stage_id} is complete but its final checkpoint {store.path(rel)} is "
            "damaged or missing (see the warning above)"
        )
    raise ExportError(f"stage {stage_id} has not finished ({store.path(rel)})")


def export_cell(store: Any, cell: Any, pretrain_id: str, finetune_id: str | None, out: Path):
    """Write one cell's encoder (and classifier) under ``out``; returns the index entry."""
    ckpt = _result_state(store, f"stages/pretrain/{pretrain_id}/checkpoint.pt", pretrain_id)
    encoder = (ckpt.get("state") or {}).get("encoder") or ckpt.get("encoder")
    p = cell.pretrain
    about = {
        "model": cell.model,
        "data": cell.data,
        "iterations": cell.iterations,
        "seed": cell.seed,
        "method": getattr(cell, "method", "simmim"),
        "pretrain_id": pretrain_id,
        "val_loss": ckpt["result"].get("val_loss"),
    }
    config = timm_config(cell.model, img_size=p.image_size)
    _write(out / "encoder", encoder, {**config, "mimscale": about})
    entry = {**about, "encoder": str(out / "encoder"), "classifier": None}
    if finetune_id is not None and store.exists(f"stages/finetune/{finetune_id}/finetune.pt"):
        ft = _result_state(store, f"stages/finetune/{finetune_id}/finetune.pt", finetune_id)
        classifier = (ft.get("state") or {}).get("classifier")
        if classifier is None:  # fine-tuned before the result kept its classifier
            log.warning("stage %s: its result holds no classifier; rerun it", finetune_id)
        else:
            head = classifier["head.fc.weight" if "head.fc.weight" in classifier else "head.weight"]
            config = timm_config(
                cell.model,
                img_size=cell.finetune.image_size,
                num_classes=int(head.shape[0]),
                pretrain_img_size=p.image_size,
            )
            top = {k: ft["result"].get(k) for k in ("top1", "top5")}
            info = {**about, "finetune_id": finetune_id, "target": _target(cell)}
            _write(out / "classifier", classifier, {**config, "mimscale": info | top})
            entry["classifier"] = str(out / "classifier")
    return entry


def select(
    graph: Any, *, cell_id: str | None = None, where: dict[str, str] | None = None
) -> list[tuple[Any, str, str | None]]:
    """Cells ``(cell, pretrain_id, finetune_id)`` by id (a cell's, or either stage's; a
    unique prefix will do) or by ``where`` (``model``, ``data``, ``iterations``, ``seed``,
    ``method``, ``target`` = value); neither: every cell (one per pre-training × target)."""
    cells = list(graph.cells)
    if cell_id:
        hits = [c for c in cells if any(i and i.startswith(cell_id) for i in c[1:])]
        if not hits:
            raise ExportError(f"--cell {cell_id}: no cell or stage of the study has that id")
        if len({(pt, ft) for _, pt, ft in hits}) > 1:
            raise ExportError(f"--cell {cell_id}: names {len(hits)} cells; give more of the id")
        cells = hits[:1]
    for key, value in (where or {}).items():
        if key not in WHERE_KEYS:
            raise ExportError(f"--where {key}={value}: unknown key; valid: {', '.join(WHERE_KEYS)}")
        cells = [c for c in cells if _value(c[0], key) == value]
    if not cells:
        raise ExportError("the selection names no cell of the study")
    return cells


WHERE_KEYS = ("model", "data", "iterations", "seed", "method", "target")


def _value(cell: Any, key: str) -> str:
    """A cell's value of a ``--where`` key, as text (the implicit target by its data)."""
    if key == "target":
        return _target(cell)
    return str(getattr(cell, key, "simmim" if key == "method" else ""))


def _target(cell: Any) -> str:
    return getattr(cell, "target", "") or cell.data_config.finetune_train


def parse_where(items: list[str]) -> dict[str, str]:
    """``["model=swinv2-b", "data=in1k-10pct"]`` → a dict; a malformed one is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ExportError(f"--where {item!r}: expected KEY=VALUE, e.g. model=swinv2-b")
        out[key] = value
    return out


def export_study(store: Any, cells: list[tuple[Any, str, str | None]], out: Path) -> list[dict]:
    """Export every cell whose pre-training is complete; ``index.json`` lists them.

    Everything is written under a hidden folder in ``out`` first and moved into place once
    every cell has been read, so a checkpoint found damaged on the way leaves ``out`` as it
    was (a cell exported before is replaced only by a whole new export of it).
    """
    done = [c for c in cells if store.stage_complete("pretrain", c[1])]
    if not done:
        raise ExportError(
            f"none of the {len(cells)} selected cells has finished pre-training "
            f"({store.uri}); see mimscale status"
        )
    existed = out.exists()
    staging = out / f".export-{uuid.uuid4().hex[:8]}"
    try:
        entries = []
        for cell, pid, fid in done:
            cell_id = fid or pid
            entry = export_cell(store, cell, pid, fid, staging / cell_id)
            for part in ("encoder", "classifier"):  # the paths they will have
                entry[part] = entry[part] and str(out / cell_id / part)
            entries.append({"cell_id": cell_id, **entry})
        for entry in entries:
            shutil.rmtree(out / entry["cell_id"], ignore_errors=True)
            (staging / entry["cell_id"]).rename(out / entry["cell_id"])
            log.info("exported %s → %s", entry["cell_id"], out / entry["cell_id"])
        (out / "index.json").write_text(json.dumps(entries, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging if existed else out, ignore_errors=True)
        raise
    staging.rmdir()
    return entries
