"""Pre-training step time of SimMIM vs MAE vs LocalMIM on one ViT, and the diagnostics' cost.

One step is forward (the method's loss) → backward → AdamW step, fp32, on
synthetic images and seeded masks already in memory; all three methods share
the same tiny ViT flavour (vit-nano: 64 px, patch 8, width 96, 4 blocks, 3
heads) and run side by side in one process. FLOPs per image come from
torch.utils.flop_counter.FlopCounterMode over one forward + backward (matmuls,
convolutions, attention; 2 per multiply-add). MAE's encoder sees 25% of the
tokens, so its encoder costs about a quarter of SimMIM's, which encodes every token
(the ``encoder`` column: FLOPs of the encoder's blocks on the tokens it sees).

The diagnostics (attention distance, entropy, head KL, query–key NMI, linear
CKA) are timed per encoder on one fixed batch: vit-nano and swinv2-nano; and through
the real diagnostics stage (``run_stage("diagnostics", …)``: the encoder read from its
pre-training stage's checkpoint, ``--diag-images`` demo val images decoded in batches of
``--diag-batch``, the tables written), after a one-step pre-training of each encoder in a
temporary store on the embedded demo data::

    python bench/bench_methods.py [--batch 32] [--steps 5] [--rounds 4] [--threads 0]
        [--diag-batch 64] [--diag-images 64]

Step times are the best of ``rounds`` interleaved rounds of ``steps`` steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.model.diagnostics import diagnose
from scaling.model.localmim import LocalMIMViT
from scaling.model.mae import MAE, seeded_noise

try:  # the model package of the re-layout, else the flat module before it
    from scaling.model.simmim import SimMIM
except ImportError:  # pragma: no cover - before the re-layout
    from scaling.simmim import SimMIM

IMG = 64


def vit_nano() -> VisionTransformer:
    """The registry's vit-nano at 64 px, built with timm directly."""
    return VisionTransformer(
        img_size=IMG, patch_size=8, embed_dim=96, depth=4, num_heads=3, qkv_bias=True,
        global_pool="avg", fc_norm=False, num_classes=0,
    )  # fmt: skip


def swinv2_nano() -> SwinTransformerV2:
    """The registry's swinv2-nano at 64 px (patch 4, window 4, width 32, depths 1-1-2-1)."""
    return SwinTransformerV2(
        img_size=IMG, patch_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
        window_size=4, num_classes=0,
    )  # fmt: skip


def token_mask(batch: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """(B, 8, 8) uint8: the ``L − int(L(1 − ratio))`` largest seeded noises masked."""
    noise = seeded_noise(batch, 64, seed)
    keep = int(64 * (1 - ratio))
    return (noise.argsort(1).argsort(1) >= keep).to(torch.uint8).reshape(batch, 8, 8)


METHODS: dict[str, tuple[Callable[[], torch.nn.Module], float, bool]] = {
    "simmim": (lambda: SimMIM(vit_nano()), 0.6, True),
    "mae": (
        lambda: MAE(vit_nano(), decoder_dim=128, decoder_depth=2, decoder_heads=4),
        0.75,
        False,
    ),
    "localmim": (lambda: LocalMIMViT(vit_nano(), decoder_dim=64, decoder_heads=4), 0.75, False),
}
"""Method → (model factory on vit-nano, mask ratio, whether the encoder sees masked tokens)."""


def flops_per_image(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> float:
    """FlopCounterMode's forward + backward FLOPs of one batch, per image."""
    with FlopCounterMode(display=False) as counter:
        model(images, mask).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def encoder_flops_per_image(encoder: VisionTransformer, tokens: int) -> float:
    """Forward + backward FLOPs of the encoder's blocks on ``tokens`` tokens, per image.

    Counted on the blocks alone: FlopCounterMode's per-module split of a
    backward pass is unreliable, and the patch embedding is the same for all.
    """
    x = torch.randn(1, tokens, encoder.embed_dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        encoder.blocks(x).sum().backward()
    encoder.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class MethodRun:
    """One method's model, batch and optimizer, ready to step; FLOPs counted once."""

    def __init__(self, name: str, batch: int) -> None:
        factory, ratio, sees_all = METHODS[name]
        torch.manual_seed(0)
        self.name, self.batch, self.model = name, batch, factory()
        self.images = torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
        self.mask = token_mask(batch, ratio)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
        self.gflop = flops_per_image(self.model, self.images, self.mask) / 1e9
        tokens = 1 + (64 if sees_all else int(64 * (1 - ratio)))  # class token + patches seen
        self.enc_gflop = encoder_flops_per_image(self.model.encoder, tokens) / 1e9
        self.best_s = float("inf")

    def step(self) -> None:
        """forward → backward → AdamW step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.images, self.mask).backward()
        self.optimizer.step()

    def time(self, steps: int) -> None:
        """Time ``steps`` steps; keep the best mean step time over calls."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.best_s = min(self.best_s, (time.perf_counter() - start) / steps)


def time_methods(*, batch: int, warmup: int, steps: int, rounds: int) -> list[MethodRun]:
    """Every method, warmed up, then timed in interleaved rounds (best round each).

    Interleaving spreads a busy machine's slow spells over all methods alike.
    """
    runs = [MethodRun(name, batch) for name in METHODS]
    for run in runs:
        for _ in range(warmup):
            run.step()
    for _ in range(rounds):
        for run in runs:
            run.time(steps)
    return runs


def time_diagnostics(factory: Callable[[], torch.nn.Module], batch: int, repeats: int) -> float:
    """Seconds of one ``diagnose`` call on a fixed batch (best of ``repeats``)."""
    torch.manual_seed(0)
    encoder = factory()
    images = torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        diagnose(encoder, images)
        best = min(best, time.perf_counter() - start)
    return best


def time_diagnostics_stage(model: str, *, images: int, batch: int, root: Path) -> float:
    """Seconds of the diagnostics stage of ``model`` (best of two runs, each in a fresh
    store after the same one-step pre-training on the demo data under ``root``)."""
    from scaling.cell.run import run_stage
    from scaling.config.identity import (
        diagnostics_identity,
        identity_hash,
        manifest_digests,
        pretrain_id,
    )
    from scaling.config.recipes import DiagnosticsConfig
    from scaling.config.schema import CellConfig, DataConfig, FinetuneConfig, PretrainConfig
    from scaling.study.store import ResultStore
    from subsets.demo import build_demo

    demo = build_demo(root / "demo")
    cell = CellConfig(
        model=model, data="demo-25pct", iterations=1,
        data_config=DataConfig(manifest_dir=str(demo / "manifests"), root=str(demo),
                               val="demo-val", num_workers=0),
        pretrain=PretrainConfig(batch_size=8, image_size=IMG, mask_patch_size=16, val_limit=8,
                                log_interval=1, amp="fp32"),
        finetune=FinetuneConfig(enabled=False, image_size=IMG),
        diagnostics=DiagnosticsConfig(enabled=True, images=images, batch_size=batch),
    )  # fmt: skip
    digests = manifest_digests(cell)
    pid = pretrain_id(cell, digests)
    did = identity_hash(diagnostics_identity(cell, pid, digests))
    best = float("inf")
    for attempt in range(2):
        store = ResultStore(str(root / f"store-{model}-{attempt}"))
        run_stage("pretrain", pid, cell, store)
        start = time.perf_counter()
        run_stage("diagnostics", did, cell, store, pretrain_id=pid)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (best kept)")
    parser.add_argument("--diag-batch", type=int, default=64)
    parser.add_argument("--diag-images", type=int, default=64, help="images of the stage")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    for flag in ("batch", "steps", "rounds", "diag_batch", "diag_images"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')}: must be ≥ 1", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# vit-nano {IMG} px, batch {args.batch}, fp32 CPU, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, timm {timm.__version__}"
    )
    print(
        f"{'method':<10} {'ms/step':>9} {'img/s':>8} {'GFLOP/img':>10} {'encoder':>8} "
        f"{'vs simmim':>10}"
    )
    runs = time_methods(batch=args.batch, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
    for run in runs:
        print(
            f"{run.name:<10} {1e3 * run.best_s:>9.1f} {run.batch / run.best_s:>8.1f} "
            f"{run.gflop:>10.4f} {run.enc_gflop:>8.4f} {run.best_s / runs[0].best_s:>9.2f}×"
        )
    print(f"# diagnostics on one batch of {args.diag_batch} images (best of 3)")
    for name, factory in (("vit-nano", vit_nano), ("swinv2-nano", swinv2_nano)):
        seconds = time_diagnostics(factory, args.diag_batch, 3)
        print(f"{name:<12} {1e3 * seconds:>9.1f} ms")
    batch = min(args.diag_batch, args.diag_images)
    print(
        f"# the diagnostics stage (run_stage: encoder from its checkpoint, {args.diag_images} "
        f"demo val images at {IMG} px in batches of {batch}, tables written; best of 2)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("vit-nano", "swinv2-nano"):
            seconds = time_diagnostics_stage(
                name, images=args.diag_images, batch=batch, root=Path(tmp)
            )
            print(f"{name:<12} {seconds:>9.2f} s/stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
