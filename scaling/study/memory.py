"""Per-GPU memory of a cell before it runs: a pure model, calibrated on the CPU.

A training rank holds (all figures per GPU, GiB = 2^30 bytes):

- **fixed state**, bytes per parameter: fp32 weights 4, fp32 gradients 4, AdamW's two
  moments 8, autocast's bf16 weight copies 2 (held from the forward to the backward)
  = 18 with DDP (``gradient_as_bucket_view=True``: the buckets are the gradients).
  FSDP2 shards the first 16 over the ranks and all-gathers one block at a time (the
  block in use and the one prefetched, fp32 weights and gradients: 2 × 8 bytes per
  parameter of the widest block, 12·C² for width C); autocast's bf16 copies are saved
  for the backward whole (2 bytes per parameter, unsharded).
- **activations**, per image of the micro-batch (batch / (accum_steps × workers)):
  ``(a[mode] × width × depth_units / depth_units₀ + b[mode]) × (image / image₀)²``, ×2
  in fp32 (no autocast halving). ``a`` and ``b`` (:data:`CALIBRATION`) are measured on
  the CPU with torch's ``MemTracker`` (peak of all live tensors of one SimMIM
  forward + backward under bf16 autocast, batch 2 minus batch 1, so weights and
  gradients cancel) at two widths of each family's paper geometry: activations are
  linear in the width at a fixed geometry (every tensor is tokens × channels or
  windows × heads × window², heads ∝ width), ``b`` holds the pixel-sized tensors
  (images, targets, the decoder's output). Then ×1.10 for the caching allocator.
- **runtime**: 2 GiB for the CUDA context, cuBLAS workspaces and NCCL buffers.

The GPU's memory is ``resources.gpu_memory_gb`` as sold, which for NVIDIA parts is GiB
(an "80 GB" H100 shows 81,559 MiB). Nothing here is measured on a GPU yet; the
command that does is ``bash scripts/gpu_check.sh`` (a peak-memory row per size).
torch-free: ``plan`` passes the parameter counts it already caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scaling.config.rules import micro_batch
from scaling.config.schema import CellConfig
from scaling.model.sizes import ModelSpec, get_spec

GIB = 2**30
MIB = 2**20
DDP_BYTES_PER_PARAM = 18
"""fp32 weights + fp32 gradients + AdamW moments + bf16 autocast copies, per rank."""
SHARDED_BYTES_PER_PARAM = 16
"""What FSDP2 shards: weights, gradients and AdamW moments (fp32)."""
GATHERED_BLOCKS = 2
"""Blocks FSDP2 holds unsharded at once: the one in use and the one prefetched."""
RUNTIME_GIB = 2.0
"""CUDA context, cuBLAS workspaces and NCCL buffers per rank."""
FRAGMENTATION = 1.10
"""The caching allocator's overhead on activations."""
FP32_ACTIVATION_FACTOR = 2.0
"""Activations without autocast: every saved matmul input in fp32 instead of bf16."""


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Activation MiB per image of one family, measured on the CPU (module docstring)."""

    image: int
    """Image side of the measurement (the family's paper geometry)."""
    depth_units: float
    """:func:`depth_units` of the geometry measured."""
    fit: dict[str, tuple[float, float]]
    """By checkpointing mode: (MiB per channel of ``embed_dim``, MiB independent of it)."""
    measured: str
    """What was measured: geometry, widths, MiB per image."""


CALIBRATION: dict[str, Calibration] = {
    "swinv2": Calibration(
        image=192,
        depth_units=7.75,  # depths 2-2-18-2
        fit={"none": (1.2725, -0.55), "block": (0.2027, 0.39), "stage": (0.7785, -0.07)},
        measured=(
            "SwinV2 2-2-18-2, window 12, 192 px: width 32 → 40.2 / 6.9 / 24.8 MiB per image "
            "(none / block / stage), width 64 → 80.9 / 13.4 / 49.8"
        ),
    ),
    "vit": Calibration(
        image=224,
        depth_units=12.0,  # 12 blocks
        fit={"none": (0.0824, 3.20), "block": (0.00769, 1.285), "stage": (0.0228, 0.890)},
        measured=(
            "ViT/16, 12 blocks, 224 px, head 64: width 128 → 13.7 / 2.3 / 3.8 MiB per image, "
            "width 256 → 24.3 / 3.3 / 6.7"
        ),
    ),
}
"""Activation calibration by family: bf16 autocast on the CPU, torch 2.14, timm 1.0.31,
re-measured by :func:`measure_activation_mib`."""


def depth_units(spec: ModelSpec) -> float:
    """Blocks weighted by their share of tokens × channels (SwinV2 halves it per stage)."""
    return sum(depth / 2**stage for stage, depth in enumerate(spec.depths))


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """One cell's memory per GPU at one phase."""

    model: str
    phase: str
    """``pretrain`` or ``finetune``."""
    batch_per_rank: int
    """Images per rank per micro-batch."""
    checkpointing: str
    parallelism: str
    workers: int
    params_m: float
    state_gib: float
    """Weights, gradients, optimizer state (and FSDP2's gathered blocks)."""
    activation_gib: float
    runtime_gib: float
    capacity_gib: float

    @property
    def total_gib(self) -> float:
        return self.state_gib + self.activation_gib + self.runtime_gib

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.capacity_gib

    def describe(self) -> str:
        return (
            f"{self.total_gib:.1f} GiB per GPU of {self.capacity_gib:g} "
            f"({self.state_gib:.1f} state + {self.activation_gib:.1f} activations "
            f"+ {self.runtime_gib:.0f} runtime; {self.model} {self.phase}, "
            f"{self.batch_per_rank} images per rank, {self.parallelism} × {self.workers}, "
            f"checkpointing {self.checkpointing})"
        )


def activation_mib_per_image(spec: ModelSpec, img_size: int, checkpointing: str, amp: str) -> float:
    """Calibrated peak activation MiB of one image (see the module docstring)."""
    cal = CALIBRATION[spec.family]
    per_width, fixed = cal.fit[checkpointing]
    mib = per_width * spec.embed_dim * depth_units(spec) / cal.depth_units + fixed
    mib *= (img_size / cal.image) ** 2
    return mib * (FP32_ACTIVATION_FACTOR if amp == "fp32" else 1.0)


def state_gib(spec: ModelSpec, params_m: float, parallelism: str, workers: int) -> float:
    """Weights, gradients and AdamW state per rank (see the module docstring)."""
    params = params_m * 1e6
    if parallelism == "ddp":
        return params * DDP_BYTES_PER_PARAM / GIB
    widest_block = 12 * spec.num_features**2
    gathered = GATHERED_BLOCKS * widest_block * 8
    autocast_copies = 2 * params  # saved for the backward whole, whatever the sharding
    return (params * SHARDED_BYTES_PER_PARAM / workers + gathered + autocast_copies) / GIB


def estimate(
    model: str,
    *,
    params_m: float,
    batch_per_rank: int,
    img_size: int,
    amp: str = "bf16",
    checkpointing: str = "none",
    parallelism: str = "ddp",
    workers: int = 1,
    gpu_memory_gb: float = 80.0,
    phase: str = "pretrain",
) -> MemoryEstimate:
    """The memory per GPU of one training rank (``amp`` auto counts as bf16: a GPU's)."""
    spec = get_spec(model)
    per_image = activation_mib_per_image(spec, img_size, checkpointing, amp)
    return MemoryEstimate(
        model=model,
        phase=phase,
        batch_per_rank=batch_per_rank,
        checkpointing=checkpointing,
        parallelism=parallelism,
        workers=workers,
        params_m=params_m,
        state_gib=state_gib(spec, params_m, parallelism, workers),
        activation_gib=per_image * batch_per_rank * FRAGMENTATION * MIB / GIB,
        runtime_gib=RUNTIME_GIB,
        capacity_gib=gpu_memory_gb,
    )


def _simmim_params_m(spec: ModelSpec, backbone_m: float) -> float:
    """The backbone plus SimMIM's 1×1-conv decoder (C → stride²·3) and mask token."""
    decoder = (spec.num_features + 1) * spec.encoder_stride**2 * 3 + spec.embed_dim
    return backbone_m + decoder / 1e6


def estimate_cell(cell: CellConfig, params_m: Callable[[str, int], float]) -> list[MemoryEstimate]:
    """Pre-training's estimate, and fine-tuning's when the cell fine-tunes.

    ``params_m(model, image_size)`` counts backbone parameters in millions (``plan``'s
    cached count, or :func:`scaling.model.build.count_params_m`).
    """
    spec, r, p, f = get_spec(cell.model), cell.resources, cell.pretrain, cell.finetune
    common = dict(
        checkpointing=p.activation_checkpointing,
        parallelism=r.parallelism,
        workers=r.workers,
        gpu_memory_gb=r.gpu_memory_gb,
        amp=p.amp,
    )
    out = [
        estimate(
            cell.model,
            params_m=_simmim_params_m(spec, params_m(cell.model, p.image_size)),
            batch_per_rank=micro_batch(p.batch_size, p.accum_steps, r.workers, "pretrain"),
            img_size=p.image_size,
            **common,
        )
    ]
    if f.enabled:
        out.append(
            estimate(
                cell.model,
                params_m=params_m(cell.model, p.image_size),  # the head is negligible
                batch_per_rank=micro_batch(f.batch_size, f.accum_steps, r.workers, "finetune"),
                img_size=f.image_size,
                phase="finetune",
                **common,
            )
        )
    return out


def cell_memory_gib(cell: CellConfig, params_m: Callable[[str, int], float]) -> float:
    """The cell's largest estimate over its phases, GiB per GPU (``plan``'s column)."""
    return max(e.total_gib for e in estimate_cell(cell, params_m))


NOTE = (
    "GPU memory per rank: weights, gradients, AdamW (18 B/param with DDP, sharded with "
    "FSDP2), activations calibrated on the CPU (bf16 autocast, torch MemTracker; "
    "scaling/study/memory.py), +10% allocator, +2 GiB CUDA/NCCL; not yet measured on a GPU "
    "(bash scripts/gpu_check.sh)"
)
"""What ``plan`` prints under its memory column."""


def check_memory(cells: Sequence[CellConfig], params_m: Callable[[str, int], float]) -> list[str]:
    """One problem per GPU cell and phase that does not fit its GPU, naming both and the
    figure (CPU cells, ``resources.gpus = 0``, have no GPU memory to check)."""
    problems = []
    for cell in (c for c in cells if c.resources.gpus > 0):
        for est in estimate_cell(cell, params_m):
            if not est.fits:
                problems.append(
                    f"cell {cell.model} × {cell.data} × {cell.iterations} (seed {cell.seed}): "
                    f"needs {est.describe()}; lower the batch per rank (more workers or "
                    f"{est.phase}.accum_steps), set activation_checkpointing in "
                    f'[pretrain.models."{cell.model}"], or parallelism = "fsdp" in '
                    f'[resources.models."{cell.model}"], or raise resources.gpu_memory_gb'
                )
    return problems


def measure_activation_mib(spec: ModelSpec, img_size: int, checkpointing: str) -> float:
    """Peak activation MiB of one image: a SimMIM step at batch 2 minus batch 1 (CPU, bf16)."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from scaling.model.simmim import SimMIM

    def peak(batch: int) -> int:
        torch.manual_seed(0)
        windows = spec.family_record.pretrained_windows(spec, img_size)
        encoder = spec.family_record.build(
            spec,
            img_size=img_size,
            window_size=spec.window_size,
            pretrained_window_sizes=(0,) * len(windows),
            num_classes=0,
            drop_path_rate=0.1,
        )
        model = SimMIM(encoder, encoder_stride=spec.encoder_stride, patch_size=spec.patch_size)
        model.checkpointing = checkpointing
        grid = img_size // spec.patch_size
        images = torch.randn(batch, 3, img_size, img_size)
        masks = (torch.rand(batch, grid, grid) < 0.6).to(torch.uint8)  # (B, h, w)
        tracker = MemTracker()
        tracker.track_external(model, images, masks)
        with tracker:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(images, masks)
            loss.backward()
        return next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]

    return (peak(2) - peak(1)) / MIB
