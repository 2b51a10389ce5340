"""What a study will compute, before anything runs: cells, ids, images, epochs, FLOPs, GPU-hours.

Ray-free and GPU-free (``mimscale plan``): manifests are read only for their
Parquet footer (image count, digest), FLOPs come from torch's FlopCounterMode on
the meta device (:mod:`scaling.model.flops`), so nothing is allocated. Where a
manifest is not on disk yet, the image count falls back to the published size of
the standard subset (marked approximate) and the cell id is pending.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scaling.config.identity import cell_digests, cell_id, study_subsets
from scaling.config.schema import CellConfig, StudyConfig
from scaling.study.memory import NOTE as MEMORY_NOTE
from scaling.study.memory import cell_memory_gib, check_memory
from scaling.study.plan_methods import diagnostics_plan, format_diagnostics

log = logging.getLogger(__name__)

H100_BF16_TFLOPS = 989.0
"""Dense bf16 peak of an H100 SXM in TFLOP/s (the default throughput basis)."""
DEFAULT_MFU = 0.40
"""Model FLOPs utilization assumed by the GPU-hour estimate."""


@dataclass(frozen=True, kw_only=True)
class CellPlan:
    """One row of ``mimscale plan``."""

    cell_id: str | None
    """None until every manifest the cell reads exists."""
    model: str
    params_m: float
    data: str
    images: int | None
    images_exact: bool
    iterations: int
    batch_size: int
    seed: int
    mask_ratio: float
    epochs: float | None
    """Passes over the pre-training subset: iterations × batch / images."""
    pretrain_flops: float
    """FLOPs of the whole pre-training (forward + backward per image × batch × iterations)."""
    gpu_hours: float
    """pretrain_flops at the stated throughput."""
    gpus: float
    """GPUs the cell holds while it runs (workers × gpus per worker)."""
    gpu_memory_gib: float | None = None
    """Estimated peak memory per GPU over its phases (:mod:`scaling.study.memory`);
    None for a CPU cell."""
    method: str = "simmim"
    """MIM method of the pre-training."""


@dataclass(frozen=True, kw_only=True)
class SharingRow:
    """One (model, data, recipe, seed) group of lengths: pre-training with and without
    prefix sharing (the trunk trains the longest length; each other starts at its fork)."""

    model: str
    data: str
    lengths: tuple[int, ...]
    forks: tuple[int, ...]
    """Per length, the step it starts from (0: from scratch)."""
    iterations: int
    shared_iterations: int
    flops: float
    shared_flops: float


@dataclass(frozen=True, kw_only=True)
class StudyPlan:
    name: str
    source: str
    cells: tuple[CellPlan, ...]
    mfu: float
    peak_tflops: float
    axes: dict[str, int]
    sharing: tuple[SharingRow, ...] = ()
    """Pre-training with and without prefix sharing, per group of lengths."""
    share_prefix: bool = True
    excluded: int = 0
    """Product points left out by ``[[grid.exclude]]``."""
    memory_problems: tuple[str, ...] = ()
    """Cells and phases whose estimated memory exceeds ``resources.gpu_memory_gb``."""
    diagnostics: tuple[Any, ...] = ()
    """Diagnostics stages per (model, method) and their FLOPs (:mod:`.plan_methods`)."""

    @property
    def total_flops(self) -> float:
        return sum(c.pretrain_flops for c in self.cells)

    def sharing_total(self) -> dict[str, float]:
        """Iterations, FLOPs and GPU-hours of pre-training, without and with sharing."""
        keys = ("iterations", "shared_iterations", "flops", "shared_flops")
        out = {k: float(sum(getattr(r, k) for r in self.sharing)) for k in keys}
        per_h = self.total_gpu_hours / max(self.total_flops, 1.0)
        out["gpu_hours"], out["shared_gpu_hours"] = (
            out["flops"] * per_h,
            out["shared_flops"] * per_h,
        )
        out["ratio"] = out["shared_iterations"] / max(out["iterations"], 1.0)
        return out

    @property
    def total_gpu_hours(self) -> float:
        return sum(c.gpu_hours for c in self.cells)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.name,
            "source": self.source,
            "assumption": {
                "mfu": self.mfu,
                "peak_tflops": self.peak_tflops,
                "note": "gpu_hours = pretrain_flops / (mfu * peak_tflops * 1e12) / 3600; "
                "pre-training only",
            },
            "axes": self.axes,
            "excluded": self.excluded,
            "memory": {"note": MEMORY_NOTE, "problems": list(self.memory_problems)},
            "diagnostics": [asdict(d) for d in self.diagnostics],
            "cells": [asdict(c) for c in self.cells],
            "sharing": {
                "enabled": self.share_prefix,
                "groups": [asdict(r) for r in self.sharing],
                "total": self.sharing_total(),
            },
            "total": {
                "cells": len(self.cells),
                "pretrain_flops": self.total_flops,
                "gpu_hours": self.total_gpu_hours,
            },
        }


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mimscale" / "plan-cache.json"


def _cached(kind: str, model: str, compute: Callable[[], float], *args: int) -> float:
    """``compute()`` memoized on disk: FlopCounterMode over a SwinV2-G takes seconds.

    The key holds the model's registry entry and the torch and timm versions, so a
    changed size or library recomputes; an unwritable cache only costs the time.
    """
    from importlib.metadata import version

    from scaling.model.sizes import MODEL_SIZES

    key = json.dumps([kind, repr(MODEL_SIZES[model]), args, version("torch"), version("timm")])
    key = hashlib.sha256(key.encode()).hexdigest()[:24]
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return float(cache[key])
    value = compute()
    cache[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        tmp.replace(path)
    except OSError as err:
        log.debug("plan cache not written: %s", err)
    return value


def _flops_per_image(model: str, image_size: int, mask_patch_size: int) -> float:
    def compute() -> float:  # imports torch: only on a cache miss
        from scaling.model.flops import pretrain_flops_per_image

        return pretrain_flops_per_image(model, img_size=image_size, mask_patch_size=mask_patch_size)

    return _cached("pretrain_flops_per_image", model, compute, image_size, mask_patch_size)


def _params_m(model: str, image_size: int) -> float:
    def compute() -> float:  # imports torch: only on a cache miss
        from scaling.model.build import count_params_m

        return count_params_m(model, image_size)

    return _cached("params_m", model, compute, image_size)


def pretrain_flops(cell: CellConfig) -> float:
    """FLOPs of the cell's whole pre-training (also the grid's longest-first order)."""
    p = cell.pretrain
    if cell.method != "simmim":
        from scaling.study.plan_methods import method_flops_per_image

        return method_flops_per_image(cell, _cached) * p.batch_size * cell.iterations
    per_image = _flops_per_image(cell.model, p.image_size, p.mask_patch_size)
    return per_image * p.batch_size * cell.iterations


def plan_study(
    study: StudyConfig, *, mfu: float = DEFAULT_MFU, peak_tflops: float = H100_BF16_TFLOPS
) -> StudyPlan:
    subsets = study_subsets(study)
    rows = []
    per_hour = 1 / (mfu * peak_tflops * 1e12) / 3600
    first_target = study.targets()[0][1].name
    cells = [c for c in study.cells() if c.target == first_target]  # one row per pre-training
    for cell in cells:
        p = cell.pretrain
        digests = cell_digests(cell, subsets)
        info = subsets[cell.data]
        flops = pretrain_flops(cell)
        rows.append(
            CellPlan(
                cell_id=None if digests is None else cell_id(cell, digests),
                model=cell.model,
                params_m=round(_params_m(cell.model, p.image_size), 3),
                data=cell.data,
                images=info.images,
                images_exact=info.exact,
                iterations=cell.iterations,
                batch_size=p.batch_size,
                seed=cell.seed,
                mask_ratio=cell.mask_ratio,
                method=cell.method,
                epochs=None if not info.images else cell.epochs_seen(info.images),
                pretrain_flops=flops,
                gpu_hours=flops * per_hour,
                gpus=cell.resources.gpus * cell.resources.workers,
                gpu_memory_gib=cell_memory_gib(cell, _params_m) if cell.resources.gpus else None,
            )
        )
    g = study.grid
    points = g.points()
    axes = {
        "models": len(g.model_names()),
        "data": len({d for _, d, _, _ in points}),
        "iterations": len({it for _, _, it, _ in points}),
        "methods": len({m for *_, m in points}),
        "seeds": len(g.seeds),
        "mask_ratios": len(g.mask_ratios) or 1,
    }
    return StudyPlan(
        name=study.name,
        source=study.source,
        cells=tuple(rows),
        mfu=mfu,
        peak_tflops=peak_tflops,
        axes=axes,
        sharing=tuple(_sharing(study, subsets)),
        share_prefix=g.share_prefix,
        excluded=len(g._product()) - len(points),
        memory_problems=tuple(check_memory(cells, _params_m)),
        diagnostics=tuple(diagnostics_plan(study, _cached)),
    )


def _sharing(study: StudyConfig, subsets: dict[str, Any]) -> list[SharingRow]:
    """Per group of lengths: pre-training iterations and FLOPs without and with sharing
    (with ``grid.share_prefix = false`` both are the same)."""
    from scaling.study.stages import build_graph

    pairs = []
    for cell in study.cells():
        digests = {n: subsets[n].digest or f"pending-{n}" for n in cell.subsets()}
        pairs.append((cell, digests))
    graph = build_graph(pairs, share_prefix=study.grid.share_prefix)
    groups: dict[str, list[Any]] = {}  # by trunk: a trunk and its branches
    for stage in graph.pretrain.values():
        groups.setdefault(stage.trunk_id or stage.stage_id, []).append(stage)
    out = []
    for stages in groups.values():
        stages.sort(key=lambda s: s.cell.iterations)
        per_step = [pretrain_flops(s.cell) / s.cell.iterations for s in stages]
        lengths = tuple(s.cell.iterations for s in stages)
        forks = tuple(s.fork_step for s in stages)
        out.append(
            SharingRow(
                model=stages[0].cell.model,
                data=stages[0].cell.data,
                lengths=lengths,
                forks=forks,
                iterations=sum(lengths),
                shared_iterations=sum(n - f for n, f in zip(lengths, forks, strict=True)),
                flops=sum(f * n for f, n in zip(per_step, lengths, strict=True)),
                shared_flops=sum(
                    f * (n - k) for f, n, k in zip(per_step, lengths, forks, strict=True)
                ),
            )
        )
    return out


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, prefix in (
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
    ):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _short(value: float) -> str:
    """Three significant digits below 100 (0.0123, 4.56), whole numbers above (12,345)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_plan(plan: StudyPlan) -> str:
    """The plan as a fixed-width table with totals and the throughput assumption."""
    axes = " × ".join(f"{n} {k}" for k, n in plan.axes.items() if n > 1 or k == "models")
    lines = [
        f"study {plan.name} ({plan.source}): {len(plan.cells)} cells = {axes}"
        + (f", less {plan.excluded} excluded (grid.exclude)" if plan.excluded else ""),
        f"GPU-hours assume {plan.mfu:.0%} MFU of {plan.peak_tflops:g} TFLOP/s per GPU "
        "(H100 SXM dense bf16 by default; --mfu, --peak-tflops), pre-training only",
        "",
    ]
    head = (
        f"{'cell':<16}  {'model':<12} {_method_head(plan)}{'params_m':>8}  {'data':<14} "
        f"{'images':>11} "
        f"{'iterations':>10} {'batch':>5} {'epochs':>8} {'flops':>10} {'gpu_h':>9} {'mem_gib':>7}"
    )
    lines += [head, "-" * len(head)]
    for c in plan.cells:
        images = "-" if c.images is None else f"{'' if c.images_exact else '~'}{c.images:,}"
        epochs = "-" if c.epochs is None else _short(c.epochs)
        gpu_h = _short(c.gpu_hours)
        mem = "-" if c.gpu_memory_gib is None else f"{c.gpu_memory_gib:.1f}"
        lines.append(
            f"{c.cell_id or 'pending-manifest':<16}  {c.model:<12} {_method_col(plan, c.method)}"
            f"{c.params_m:>8.1f}  "
            f"{c.data:<14} {images:>11} {c.iterations:>10} {c.batch_size:>5} {epochs:>8} "
            f"{_si(c.pretrain_flops, 'FLOP'):>10} {gpu_h:>9} {mem:>7}"
        )
    lines.append("-" * len(head))
    total_h = plan.total_gpu_hours
    lines.append(
        f"total: {len(plan.cells)} cells, {_si(plan.total_flops, 'FLOP')} pre-training, "
        f"{_short(total_h)} GPU-hours ({_short(total_h / 24)} GPU-days)"
    )
    lines += _format_sharing(plan)
    lines += format_diagnostics(list(plan.diagnostics), _si)
    lines.append(f"mem_gib: {MEMORY_NOTE}")
    lines += [f"does not fit: {problem}" for problem in plan.memory_problems]
    if any(not c.images_exact for c in plan.cells):
        lines.append(
            "~ image count estimated from the standard subset size (no manifest on disk); "
            "pending-manifest: the cell id needs the manifests' digests"
        )
    return "\n".join(lines)


def _method_head(plan: StudyPlan) -> str:
    """The ``method`` column's header, shown when the study has more than one method."""
    return _method_col(plan, "method")


def _method_col(plan: StudyPlan, method: str) -> str:
    return f"{method:<9} " if len({c.method for c in plan.cells}) > 1 else ""


def _format_sharing(plan: StudyPlan) -> list[str]:
    """Pre-training iterations, FLOPs and GPU-hours with and without prefix sharing."""
    t = plan.sharing_total()
    if not plan.share_prefix:
        return ["prefix sharing: off (grid.share_prefix = false): every length from scratch"]
    lines = ["", "pre-training with prefix sharing (each shorter length branches off the "
             "longest at its fork step):"]  # fmt: skip
    head = f"{'model':<12} {'data':<14} {'lengths (fork)':<44} {'iterations':>12} {'shared':>12}"
    lines += [head, "-" * len(head)]
    for r in plan.sharing:
        spans = ", ".join(
            f"{n:,}" + (f" ({k:,})" if k else "") for n, k in zip(r.lengths, r.forks, strict=True)
        )
        lines.append(
            f"{r.model:<12} {r.data:<14} {spans:<44} {r.iterations:>12,} {r.shared_iterations:>12,}"
        )
    lines.append(
        f"pre-training: {t['iterations']:,.0f} iterations without sharing, "
        f"{t['shared_iterations']:,.0f} with ({t['ratio']:.3f}×); "
        f"{_si(t['flops'], 'FLOP')} → {_si(t['shared_flops'], 'FLOP')}; "
        f"{_short(t['gpu_hours'])} → {_short(t['shared_gpu_hours'])} GPU-hours"
    )
    return lines
