"""Where a study's cells run: ``[resources]`` (per-model overrides resolved here).

Not part of any stage's id: how many GPUs a cell gets changes how fast it runs, not what it
computes (the global batch is the recipe's).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from scaling.config.parse import check, from_dict, to_dict

PARALLELISM = ("ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class CellResources:
    cpus: float = 1.0
    """CPUs per training worker."""
    gpus: float = 0.0
    """GPUs per training worker."""
    workers: int = 1
    """Training workers (DDP ranks) per cell; > 1 runs Ray Train's TorchTrainer."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GB as sold (H100: 80); ``plan`` refuses cells that do not fit."""
    parallelism: str = "ddp"
    """``ddp`` (replicated weights) or ``fsdp`` (FSDP2: parameters, gradients, optimizer
    state sharded over the ranks)."""
    async_checkpoint: bool = True
    """A cell of several workers writes its checkpoint shards in the background (training
    goes on; the checkpoint is named once they are durable); false: it waits for them."""

    def __post_init__(self) -> None:
        check(self.cpus > 0, "cpus", f"must be > 0, got {self.cpus}")
        check(self.gpus >= 0, "gpus", f"must be >= 0, got {self.gpus}")
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        check(
            0 < self.gpu_memory_gb <= 4096,
            "gpu_memory_gb",
            f"must be in (0, 4096], got {self.gpu_memory_gb}",
        )
        check(
            self.parallelism in PARALLELISM,
            "parallelism",
            f"must be one of {PARALLELISM}, got {self.parallelism!r}",
        )


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig(CellResources):
    """``[resources]``: the fields of :class:`CellResources` are the study's, for every model,
    with per-model overrides in ``models``; and how the grid runs its cells."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model overrides of the fields above, e.g. ``[resources.models."swinv2-g"]
    workers = 32``; a field not given there is the study's."""
    max_concurrent: int = 0
    """Cells running at once (0: as many as the cluster fits)."""
    max_failures: int = 3
    """Retries of a failed cell, each from its last checkpoint."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for model in self.models:
            self.for_model(model)  # each override resolves (errors keyed models.<size>.<key>)
        check(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        check(
            self.max_concurrent >= 0,
            "max_concurrent",
            f"must be >= 0 (0: as many as the cluster fits), got {self.max_concurrent}",
        )

    def _default(self) -> CellResources:
        return CellResources(**{f.name: getattr(self, f.name) for f in fields(CellResources)})

    def for_model(self, model: str) -> CellResources:
        """The study's resources with ``model``'s overrides."""
        default = self._default()
        overrides = self.models.get(model)
        if not overrides:
            return default
        return from_dict(CellResources, {**to_dict(default), **overrides}, f"models.{model}")
