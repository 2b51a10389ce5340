"""Data parallelism of a training phase: DDP or FSDP2, and every rank's own random stream.

``ddp`` replicates the model on every rank and all-reduces the gradients, with
``broadcast_buffers=False`` (SwinV2's buffers — relative position indices, attention
masks — are constants built identically on every rank, so broadcasting them each
forward only costs time) and ``gradient_as_bucket_view=True`` (gradients live in the
all-reduce buckets: 4 bytes per parameter less). ``fsdp`` is PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``): each transformer block is a unit whose
parameters, gradients and optimizer state are sharded over the ranks and all-gathered
only while the block runs, then the root takes the rest (embedding, norms, decoder).
FSDP2 changes parameters in place into DTensors, so the optimizer is built after
:func:`wrap`.

Both are exact in the sense the tests state: on the CPU (gloo), 2 ranks on half the
batch each give the same losses as one process on the whole batch to 1e-5 relative —
only the order of float32 sums differs (each rank's gradient mean, then the mean over
ranks), about 1e-7 per step. Every rank draws its own drop-path masks
(:func:`seed_rank`); the initialisation is drawn before that, from the cell's seed,
so every rank starts from the same weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _ddp(model: nn.Module, units: Sequence[nn.Module]) -> nn.Module:
    return nn.parallel.DistributedDataParallel(
        model, broadcast_buffers=False, gradient_as_bucket_view=True
    )


def _fsdp(model: nn.Module, units: Sequence[nn.Module]) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return model


PARALLELISM: dict[str, Callable[[nn.Module, Sequence[nn.Module]], nn.Module]] = {
    "ddp": _ddp,
    "fsdp": _fsdp,
}
"""How a phase's model is spread over the ranks (``resources.parallelism``)."""


def wrap(model: nn.Module, parallelism: str, units: Sequence[nn.Module]) -> nn.Module:
    """``model`` for a process group of several ranks; ``units`` are FSDP2's shard units
    (the transformer blocks, :attr:`scaling.model.family.Family.blocks`)."""
    try:
        return PARALLELISM[parallelism](model, units)
    except KeyError:
        raise ValueError(
            f"resources.parallelism: unknown {parallelism!r}; valid: {', '.join(PARALLELISM)}"
        ) from None


def sharded(model: nn.Module) -> bool:
    """Whether FSDP2 sharded ``model`` (its state is DTensors: save and load through
    ``torch.distributed.checkpoint``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream: the cell's seed on rank 0 (one rank runs
    as it always did), a 63-bit hash of (seed, rank) on the others."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"mimscale-rank:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank(seed: int, rank: int) -> None:
    """After the (shared) initialisation: give rank ``rank`` its own drop-path stream."""
    if rank:
        torch.manual_seed(rank_seed(seed, rank))
