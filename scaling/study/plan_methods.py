"""What ``mimscale plan`` adds for a study with several methods or diagnostics.

Pre-training FLOPs of a method other than SimMIM (:func:`method_flops_per_image`: MAE's
encoder sees a quarter of the tokens, LocalMIM adds its decoders), and the cost of the
diagnostics stages: one forward of the bare encoder per diagnostic image, once per
pre-training stage. FLOPs come from FlopCounterMode on the meta device, cached on disk
like the rest of the plan (no GPU, no Ray; torch only on a cache miss).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scaling.config.identity import identity_hash, pretrain_identity
from scaling.config.parse import to_dict
from scaling.config.schema import CellConfig, StudyConfig

Cached = Callable[..., float]  # plan._cached(kind, model, compute, *args)


def method_flops_per_image(cell: CellConfig, cached: Cached) -> float:
    """FLOPs of one image's forward + backward of the cell's (non-SimMIM) method."""
    recipe = to_dict(cell.recipe)
    recipe.pop("models", None)
    img = cell.pretrain.image_size

    def compute() -> float:  # imports torch: only on a cache miss
        from scaling.model.methods import flops_per_image

        return flops_per_image(cell.method, cell.model, img_size=img, recipe=cell.recipe)

    args = (cell.method, img, json.dumps(recipe, sort_keys=True))
    return cached("method_flops_per_image", cell.model, compute, *args)


@dataclass(frozen=True, kw_only=True)
class DiagnosticsPlan:
    """The diagnostics stages of one (model, method): their count and cost."""

    model: str
    method: str
    stages: int
    """Pre-training stages of this (model, method), one diagnostics stage each."""
    images: int
    forward_flops: float
    """One stage: the encoder's forward over the diagnostic images."""


def diagnostics_plan(study: StudyConfig, cached: Cached) -> list[DiagnosticsPlan]:
    """Per (model, method) of the grid: diagnostics stages and FLOPs (none when off)."""
    if not study.diagnostics.enabled:
        return []
    groups: dict[tuple[str, str], set[str]] = {}
    for cell in study.cells():  # one stage per distinct pre-training (digests aside)
        groups.setdefault((cell.model, cell.method), set()).add(
            identity_hash(pretrain_identity(cell, {}))
        )
    n = study.diagnostics.images
    out = []
    for (model, method), stages in groups.items():
        size = study.pretrain_for(model).image_size

        def compute(model: str = model, size: int = size) -> float:
            from scaling.model.methods import encoder_forward_flops

            return encoder_forward_flops(model, img_size=size)

        per_image = cached("encoder_forward_flops", model, compute, size)
        out.append(
            DiagnosticsPlan(
                model=model, method=method, stages=len(stages), images=n,
                forward_flops=per_image * n,
            )
        )  # fmt: skip
    return out


def format_diagnostics(rows: list[DiagnosticsPlan], si: Callable[[float, str], str]) -> list[str]:
    """Plan lines for the diagnostics stages (none when off)."""
    if not rows:
        return []
    head = f"{'model':<12} {'method':<9} {'stages':>6} {'images':>7} {'flops/stage':>12}"
    lines = ["", "diagnostics (a stage after each pre-training: one encoder forward per image):"]
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.model:<12} {r.method:<9} {r.stages:>6} {r.images:>7} "
            f"{si(r.forward_flops, 'FLOP'):>12}"
        )
    total = sum(r.stages * r.forward_flops for r in rows)
    lines.append(f"diagnostics total: {sum(r.stages for r in rows)} stages, {si(total, 'FLOP')}")
    return lines


def as_json(rows: list[DiagnosticsPlan]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(r) for r in rows]
