"""An iteration-based, resumable, DDP-sharded batch sampler.

The data stream is an endless sequence of epochs; epoch ``e`` visits the samples
in the order of a permutation seeded by ``(seed, e)``. Step ``k`` of the run takes
the ``k``-th global batch of ``batch_size · world_size`` samples from that stream,
and rank ``r`` takes its ``r``-th contiguous slice. Everything is a pure function
of ``(seed, step)``:

- resuming at ``start_step=k`` yields exactly batches ``k, k+1, …`` of an
  uninterrupted run (no state to save but the step);
- the union over ranks of a step's batches is the same for any ``world_size`` with
  the same global batch, so a cell's data does not depend on its device count.

With ``drop_last=True`` (the default) every epoch is cut to whole global batches
and a batch never spans two epochs; with ``drop_last=False`` nothing is dropped
and a batch may straddle an epoch boundary (needed when the data set is smaller
than one global batch).

``order`` replaces the permutation: a pure function of the epoch returning a
permutation of the samples (a pack's shard-aware order,
:meth:`scaling.data.source.PackSource.epoch_order`); everything above holds for it
unchanged, since it only decides which permutation epoch ``e`` uses.

Each yielded batch is a list of ``(epoch, index)`` pairs, which the datasets of
:mod:`scaling.data.pretrain` take as their item, so every random decision about a sample
can be seeded by ``(seed, epoch, index)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


class StepSampler:
    """Batches of ``(epoch, index)`` pairs for steps ``start_step, start_step + 1, …``."""

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        end_step: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        order: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples: must be ≥ 1, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed: must be ≥ 0, got {seed}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be ≥ 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: must be in [0, {world_size}), got {rank}")
        if start_step < 0 or (end_step is not None and end_step < start_step):
            raise ValueError(f"steps: need 0 ≤ start_step ≤ end_step, got {start_step}, {end_step}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.global_batch = batch_size * world_size
        if drop_last and num_samples < self.global_batch:
            raise ValueError(
                f"batch_size: a global batch of {self.global_batch} "
                f"({batch_size} × {world_size} ranks) is larger than the {num_samples} samples; "
                "use drop_last=False or a smaller batch"
            )
        self.order = order
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> float:
        """Steps in one pass over the data (fractional when batches straddle epochs)."""
        if self.drop_last:
            return self.num_samples // self.global_batch
        return self.num_samples / self.global_batch

    def epochs_seen(self, step: int) -> float:
        """Epochs completed after ``step`` steps (the x-axis that lines up data sizes)."""
        return step / self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the samples in ``epoch`` (cached for the current epoch)."""
        if epoch != self._perm_epoch:
            if self.order is not None:
                self._perm = np.asarray(self.order(epoch), dtype=np.int64)
                if len(self._perm) != self.num_samples:
                    raise ValueError(
                        f"order: epoch {epoch} has {len(self._perm)} samples, not "
                        f"{self.num_samples}"
                    )
            else:
                rng = np.random.default_rng([self.seed, epoch])
                self._perm = rng.permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(epoch, index)`` pairs at ``step``."""
        n, b = self.num_samples, self.batch_size
        if self.drop_last:
            epoch, k = divmod(step, int(self.steps_per_epoch))
            start = k * self.global_batch + self.rank * b
            return [(epoch, int(i)) for i in self.permutation(epoch)[start : start + b]]
        first = step * self.global_batch + self.rank * b
        out = []
        for pos in range(first, first + b):
            epoch, offset = divmod(pos, n)
            out.append((epoch, int(self.permutation(epoch)[offset])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.end_step is None or step < self.end_step:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.end_step is None:
            raise TypeError("an endless StepSampler has no length; pass end_step")
        return self.end_step - self.start_step
