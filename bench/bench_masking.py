"""SimMIM mask generation: µs per mask, the old numpy SeedSequence masks vs ours.

The data loader draws one mask per sample, ``MaskGenerator()(seed, epoch, index)``,
and one per validation image, ``val_mask(key)`` with a 64-bit manifest key. The
baseline is the algorithm ``scaling.data.masking`` used before its ``v1`` (kept below as
``old_mask``): ``np.random.default_rng(words).permutation(N)[:k]``, whose cost is
mostly the construction of numpy's SeedSequence. Both are timed on the same word
tuples, interleaved round by round in short rounds; the best round of each is
reported (the least disturbed by other processes), and the ratio of the medians too::

    .venv/bin/python bench/bench_masking.py
    .venv/bin/python bench/bench_masking.py --masks 2000 --rounds 51 --json masks.json

Configurations: the paper's 192 px / 32 px blocks / patch 4 (6×6 blocks, 48×48
tokens), the quickstart's and the tests' 32 px / 8 px / patch 4 (4×4 blocks, 8×8
tokens), and the tiny models' 64 px / 16 px / patch 4 (tests/scaling/model/test_simmim.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.data.masking import VAL_MASK_SEED, MaskGenerator

# (label, input_size, mask_patch_size, model_patch_size)
CONFIGS: tuple[tuple[str, int, int, int], ...] = (
    ("paper 192/32/p4", 192, 32, 4),
    ("quickstart 32/8/p4", 32, 8, 4),
    ("tiny 64/16/p4", 64, 16, 4),
)


@dataclass(frozen=True, kw_only=True)
class MaskResult:
    """One configuration and kind of seed words, old and new side by side."""

    config: str
    words: str
    grid: str
    masked_blocks: int
    old_us: float
    new_us: float
    speedup: float
    """Best round of the old over best round of the new."""
    median_speedup: float


def old_mask(gen: MaskGenerator, *seed_words: int) -> np.ndarray:
    """The pre-v1 ``MaskGenerator.__call__``, verbatim but for ``self`` → ``gen``."""
    rng = np.random.default_rng([int(w) for w in seed_words])
    n = gen.blocks_per_side
    blocks = np.zeros(n * n, dtype=np.uint8)
    blocks[rng.permutation(n * n)[: gen.num_masked_blocks]] = 1
    blocks = blocks.reshape(n, n)
    return blocks.repeat(gen.scale, axis=0).repeat(gen.scale, axis=1)


def seed_words(kind: str, count: int) -> list[tuple[int, ...]]:
    """What the loaders pass: training ``(seed, epoch, index)``, validation ``(seed, key)``."""
    if kind == "train":
        return [(0, 3, index) for index in range(count)]
    keys = np.random.default_rng(0).integers(0, 2**64, size=count, dtype=np.uint64)
    return [(VAL_MASK_SEED, int(key)) for key in keys]


def time_per_mask(fn: Callable[..., np.ndarray], words: list[tuple[int, ...]]) -> float:
    start = time.perf_counter()
    for w in words:
        fn(*w)
    return (time.perf_counter() - start) / len(words) * 1e6


def bench(label: str, gen: MaskGenerator, kind: str, masks: int, rounds: int) -> MaskResult:
    words = seed_words(kind, masks)
    k = gen.num_masked_blocks
    for w in words[:50]:  # both make exactly k blocks of the right shape
        for mask in (old_mask(gen, *w), gen(*w)):
            assert mask.dtype == np.uint8 and mask[:: gen.scale, :: gen.scale].sum() == k
    old, new = [], []
    for _ in range(rounds):
        old.append(time_per_mask(lambda *w: old_mask(gen, *w), words))
        new.append(time_per_mask(gen, words))
    n, side = gen.blocks_per_side, gen.blocks_per_side * gen.scale
    return MaskResult(
        config=label,
        words=kind,
        grid=f"{n}x{n} blocks -> {side}x{side}",
        masked_blocks=k,
        old_us=min(old),
        new_us=min(new),
        speedup=min(old) / min(new),
        median_speedup=float(np.median(old) / np.median(new)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=1000, help="masks per timed round")
    parser.add_argument("--rounds", type=int, default=31, help="rounds; the best one counts")
    parser.add_argument("--ratio", type=float, default=0.6, help="mask ratio")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(
        f"# {args.masks} masks × best of {args.rounds} rounds; µs per mask (including the "
        "Python call)"
    )
    print(
        f"{'config':20} {'words':6} {'grid':22} {'k':>3} {'old µs':>8} {'new µs':>8} "
        f"{'×':>6} {'× med':>6}"
    )
    results = []
    for label, size, mask_patch, patch in CONFIGS:
        gen = MaskGenerator(
            input_size=size,
            mask_patch_size=mask_patch,
            model_patch_size=patch,
            mask_ratio=args.ratio,
        )
        for kind in ("train", "val"):
            r = bench(label, gen, kind, args.masks, args.rounds)
            results.append(r)
            print(
                f"{r.config:20} {r.words:6} {r.grid:22} {r.masked_blocks:3d} "
                f"{r.old_us:8.1f} {r.new_us:8.2f} {r.speedup:6.1f} {r.median_speedup:6.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
