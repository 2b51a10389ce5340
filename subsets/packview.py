"""One manifest seen through a pack: the encoded bytes of its row ``j``, block by block.

A data loader holds a :class:`PackView` instead of a data root: ``view.read(j)`` returns
the bytes of the manifest's row ``j`` (what ``open(root / path).read()`` returned), read
through a small LRU cache of whole blocks, so the rows of one block cost one ranged
read per process while a window of the epoch order (:func:`subsets.shards.epoch_order`)
passes; ``view.blocks`` gives that order its block of every row.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np

from subsets.shards import Pack, epoch_order, open_pack


class PackView:
    """The rows of one manifest (its ``key`` column, in manifest order) in a pack."""

    def __init__(
        self,
        pack: Pack | str | os.PathLike[str],
        keys: np.ndarray,
        what: str,
        *,
        cache_blocks: int = 8,
    ) -> None:
        if cache_blocks < 1:
            raise ValueError(f"cache_blocks: must be >= 1, got {cache_blocks}")
        self.pack = pack if isinstance(pack, Pack) else open_pack(pack)
        self.rows = self.pack.rows_of(np.asarray(keys, dtype=np.uint64), what)
        """Pack row of every manifest row."""
        self.blocks = self.pack.block_of[self.rows]
        """Pack block of every manifest row (what the epoch order groups by)."""
        self.cache_blocks = cache_blocks
        self._cache: OrderedDict[int, tuple[memoryview, np.ndarray]] = OrderedDict()
        self.block_reads = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:  # a worker starts with an empty cache
        state = dict(self.__dict__)
        state["_cache"], state["block_reads"] = OrderedDict(), 0
        return state

    def _block(self, block: int) -> tuple[memoryview, np.ndarray]:
        """(data, starts) of a block (:meth:`subsets.shards.Pack.block_bytes`)."""
        cached = self._cache.get(block)
        if cached is None:
            cached = self.pack.block_bytes(block)
            self.block_reads += 1
            self._cache[block] = cached
            if len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(block)
        return cached

    def close(self) -> None:
        """Drop the cached blocks and close the pack's files and maps."""
        self._cache.clear()
        self.pack.close()

    def read(self, j: int) -> memoryview:
        """The encoded bytes of manifest row ``j``: a read-only view into its cached block
        (no copy; ``bytes(view)`` makes one)."""
        block = int(self.blocks[j])
        data, starts = self._block(block)
        row = int(self.rows[j])
        start = int(starts[row - self.pack.block_starts[block]])
        return data[start : start + int(self.pack.sizes[row])]

    def path(self, j: int) -> str:
        """The data-root path of manifest row ``j`` (for messages)."""
        return self.pack.paths[int(self.rows[j])].as_py()

    def epoch_order(self, seed: int, epoch: int, window: int = 4) -> np.ndarray:
        """The shard-aware order of the manifest's rows in ``epoch``."""
        return epoch_order(self.blocks, seed=seed, epoch=epoch, window=window)
