"""A study as a graph of stages: pre-training trunks and branches, and fine-tunes on top.

Every cell of the grid is two stages. Its **pre-training** stage is keyed by what
determines its weights (model, data digests, resolved recipe, length, seed); its
**fine-tuning** stage by that stage's id, its own recipe and its data. Two cells that
differ only in their fine-tuning share one pre-training stage, so changing
``finetune.*`` runs only fine-tuning.

**Prefix sharing.** Lengths L1 < L2 of the same (model, data, recipe, seed, mask ratio)
train identically — the same lr, data order, masks, augmentation and drop path —
until their fork step, the first step where lr(t; L1) and lr(t; L2) may differ
(:func:`scaling.train.schedule.fork_step`: multistep with warm-up in steps, L1's first
milestone; WSD, the start of L1's decay; cosine or a warm-up given as a fraction,
nothing). So the longest length is trained as the **trunk**; when it reaches the fork
step of a shorter length it writes that length's resumable checkpoint, and the shorter
length runs as a **branch** from there. A branch is the same computation as an
independent run resumed at its fork step (exact resume), so its results are equal bit
for bit on the CPU. Every pre-training stage also keeps ``prefix.pt``, its state at its
own fork step with any longer length, so a study grown with a longer length continues
from the longest prefix already trained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scaling.config.identity import (
    diagnostics_identity,
    finetune_identity,
    identity_hash,
    pretrain_identity,
    stage_key,
)
from scaling.config.parse import to_dict
from scaling.config.schema import CellConfig

KINDS = ("pretrain", "finetune", "diagnostics")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One unit of work of the study's graph."""

    kind: str
    """``pretrain``, ``finetune`` or ``diagnostics``."""
    stage_id: str
    cell: CellConfig
    """The cell whose stage this is (for a shared pre-training stage: the first such cell)."""
    identity: dict[str, Any]
    digests: dict[str, str]
    pretrain_id: str | None = None
    """Fine-tuning, diagnostics: the pre-training stage whose encoder it reads."""
    trunk_id: str | None = None
    """Branch: the trunk that writes its checkpoint at ``fork_step``."""
    fork_step: int = 0
    """Branch: the step its checkpoint comes from the trunk."""
    forks: tuple[tuple[int, str], ...] = ()
    """Trunk: ``(step, branch id)`` of every branch it seeds."""
    prefix_step: int = 0
    """Pre-training: the step where ``prefix.pt`` is kept (0: none)."""

    @property
    def dir(self) -> str:
        """The stage's directory in the results store."""
        return f"stages/{self.kind}/{self.stage_id}"

    @property
    def role(self) -> str:
        """``trunk``, ``branch``, ``run`` (pre-training on its own), ``finetune`` or
        ``diagnose``."""
        if self.kind != "pretrain":
            return "diagnose" if self.kind == "diagnostics" else self.kind
        return "trunk" if self.forks else "branch" if self.trunk_id else "run"

    def record(self) -> dict[str, Any]:
        """``stage.json``: identity, its digest-free key, the graph edges."""
        return {
            "stage_id": self.stage_id,
            "kind": self.kind,
            "key": stage_key(self.identity),
            "identity": self.identity,
            "pretrain_id": self.pretrain_id,
            "trunk_id": self.trunk_id,
            "fork_step": self.fork_step,
            "forks": [list(f) for f in self.forks],
            "prefix_step": self.prefix_step,
        }

    def to_job(self) -> dict[str, Any]:
        """What a trial needs to run the stage (plain data: it travels to Ray workers)."""
        return {
            "kind": self.kind,
            "stage_id": self.stage_id,
            "cell": to_dict(self.cell),
            "pretrain_id": self.pretrain_id,
            "trunk_id": self.trunk_id,
            "fork_step": self.fork_step,
            "forks": [list(f) for f in self.forks],
            "prefix_step": self.prefix_step,
        }


@dataclass(frozen=True)
class StageGraph:
    """The stages of a study and the cells they make up."""

    pretrain: dict[str, Stage]
    finetune: dict[str, Stage]
    cells: list[tuple[CellConfig, str, str | None]] = field(default_factory=list)
    """Every grid cell with its (pre-training id, fine-tuning id or None), in grid order."""
    diagnostics: dict[str, Stage] = field(default_factory=dict)
    """One diagnostics stage per pre-training stage (``[diagnostics] enabled``)."""
    diagnostics_of: dict[str, str] = field(default_factory=dict)
    """Pre-training id → its diagnostics stage's id."""

    def stages(self) -> list[Stage]:
        return [*self.pretrain.values(), *self.finetune.values(), *self.diagnostics.values()]

    def get(self, stage_id: str) -> Stage:
        return (
            self.pretrain.get(stage_id) or self.finetune.get(stage_id) or self.diagnostics[stage_id]
        )

    def cell_ids(self) -> list[str]:
        return [ft or pt for _, pt, ft in self.cells]


def _share_key(stage: Stage) -> str:
    """Pre-training stages with the same key differ only in their length."""
    ident = {k: v for k, v in stage.identity.items() if k != "iterations"}
    return stage_key(ident) + str(sorted(stage.identity["digests"].items()))


def fork_of(short: CellConfig, long: CellConfig) -> int:
    """The fork step of two lengths of one (model, data, recipe, seed)."""
    from scaling.train.schedule import fork_step

    p = short.pretrain
    return fork_step(
        short.iterations,
        long.iterations,
        (p.warmup_for(short.iterations), long.pretrain.warmup_for(long.iterations)),
        schedule=p.schedule,
        milestones=p.milestones,
        decay_fraction=p.decay_fraction,
    )


def prefix_of(cell: CellConfig) -> int:
    """The step up to which any longer length shares ``cell``'s pre-training (0: none)."""
    from scaling.train.schedule import prefix_step

    p = cell.pretrain
    step = prefix_step(
        schedule=p.schedule,
        total_steps=cell.iterations,
        warmup_steps=p.warmup_for(cell.iterations),
        milestones=p.milestones,
        decay_fraction=p.decay_fraction,
    )
    if p.warmup_fraction > 0:  # the warm-up grows with the length: nothing shared
        return 0
    return step if 0 < step < cell.iterations else 0


def build_graph(
    cells: Iterable[tuple[CellConfig, dict[str, str]]], *, share_prefix: bool = True
) -> StageGraph:
    """The stages of ``(cell, manifest digests)`` pairs, with trunks and branches when
    ``share_prefix``."""
    pretrain: dict[str, Stage] = {}
    finetune: dict[str, Stage] = {}
    rows: list[tuple[CellConfig, str, str | None]] = []
    for cell, digests in cells:
        ident = pretrain_identity(cell, digests)
        pid = identity_hash(ident)
        pretrain.setdefault(
            pid, Stage(kind="pretrain", stage_id=pid, cell=cell, identity=ident, digests=digests)
        )
        fid = None
        if cell.finetune.enabled:
            fident = finetune_identity(cell, pid, digests)
            fid = identity_hash(fident)
            finetune.setdefault(
                fid,
                Stage(
                    kind="finetune",
                    stage_id=fid,
                    cell=cell,
                    identity=fident,
                    digests=digests,
                    pretrain_id=pid,
                ),
            )
        rows.append((cell, pid, fid))
    if share_prefix:
        pretrain = _with_sharing(pretrain)
    diagnostics = _diagnostics_stages(pretrain)
    return StageGraph(
        pretrain=pretrain,
        finetune=finetune,
        cells=rows,
        diagnostics=diagnostics,
        diagnostics_of={s.pretrain_id: i for i, s in diagnostics.items() if s.pretrain_id},
    )


def _diagnostics_stages(pretrain: dict[str, Stage]) -> dict[str, Stage]:
    """A diagnostics stage after every pre-training stage whose cell asks for one; it
    runs in one process (its cost is one forward over a small batch)."""
    import dataclasses

    out = {}
    for pid, stage in pretrain.items():
        cell = stage.cell
        if not cell.diagnostics.enabled:
            continue
        one = dataclasses.replace(cell.resources, workers=1)
        ident = diagnostics_identity(cell, pid, stage.digests)
        did = identity_hash(ident)
        out[did] = Stage(
            kind="diagnostics",
            stage_id=did,
            cell=dataclasses.replace(cell, resources=one),
            identity=ident,
            digests=stage.digests,
            pretrain_id=pid,
        )
    return out


def _with_sharing(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Trunks and branches: per group, the longest length seeds every exact shorter one."""
    import dataclasses

    groups: dict[str, list[Stage]] = {}
    for stage in stages.values():
        groups.setdefault(_share_key(stage), []).append(stage)
    out = {}
    for group in groups.values():
        group.sort(key=lambda s: s.cell.iterations)
        trunk, forks = group[-1], []
        for stage in group:
            prefix = prefix_of(stage.cell)
            fork = fork_of(stage.cell, trunk.cell) if stage is not trunk else 0
            if fork > 0:
                forks.append((fork, stage.stage_id))
                stage = dataclasses.replace(stage, trunk_id=trunk.stage_id, fork_step=fork)
            out[stage.stage_id] = dataclasses.replace(stage, prefix_step=prefix)
        if forks:
            out[trunk.stage_id] = dataclasses.replace(out[trunk.stage_id], forks=tuple(forks))
    return out


@dataclass(frozen=True, kw_only=True)
class SharingPlan:
    """Pre-training iterations of one (model, data, recipe, seed) with and without sharing."""

    model: str
    data: str
    lengths: tuple[int, ...]
    iterations: int
    """Without sharing: every length from scratch."""
    shared_iterations: int
    """With sharing: the trunk, and each branch from its fork."""


def sharing_plan(graph: StageGraph) -> list[SharingPlan]:
    """Per group of lengths: iterations with and without prefix sharing."""
    groups: dict[str, list[Stage]] = {}
    for stage in graph.pretrain.values():
        groups.setdefault(_share_key(stage), []).append(stage)
    out = []
    for group in groups.values():
        lengths = sorted(s.cell.iterations for s in group)
        shared = sum(s.cell.iterations - s.fork_step for s in group)
        cell = group[0].cell
        out.append(
            SharingPlan(
                model=cell.model,
                data=cell.data,
                lengths=tuple(lengths),
                iterations=sum(lengths),
                shared_iterations=shared,
            )
        )
    return out
