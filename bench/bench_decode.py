"""Bench: what the fast decode costs against the released recipe's exact decode.

Side by side, same images, same seeds, on the embedded demo data set (built if needed):

1. pixels: mean and max absolute difference (grey levels) between ``decode="fast"``
   (reduced-size DCT + torch's antialiased bilinear) and ``decode="exact"`` (full PIL
   decode + PIL bilinear: torchvision's RandomResizedCrop on PIL images, as the released
   SimMIM code) over the pre-training crops and validation squares of the demo set, and
   of a real photograph (scikit-learn's china.jpg, 427×640) at 192 px, where the fast
   path uses the 1/2-scale DCT;
2. validation loss: a tiny SimMIM (default swinv2-nano, 32 px, as the quickstart) trained
   for ``--steps`` steps with each decode mode (``--seeds`` runs each, seeds of the model
   and the data order), each evaluated on the validation set
   decoded both ways: a 2 × 2 table. The off-diagonal terms say what mixing modes
   costs; the fast-trained vs exact-trained gap (both on exact pixels) what the fast
   path costs a study.

    .venv/bin/python bench/bench_decode.py [--steps 150] [--seeds 3] [--model swinv2-nano]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaling.data.decode import EncodedImage, center_square_box, random_resized_crop_box  # noqa: E402
from scaling.data.masking import MaskGenerator  # noqa: E402
from scaling.data.pretrain import build_pretrain_loader, build_val_loader  # noqa: E402


def pixel_differences(paths: list[Path], size: int) -> tuple[float, float, int]:
    """(mean, max) |fast − exact| in grey levels over a train crop and a val square each."""
    rng = random.Random(0)
    total, count, worst = 0.0, 0, 0
    for path in paths:
        image = EncodedImage(path.read_bytes())
        train = random_resized_crop_box(rng, image.height, image.width, (0.67, 1.0), (3 / 4, 4 / 3))
        for box in (train, center_square_box(image.height, image.width)):
            fast = image.crop_resize(box, (size, size)).int()
            exact = image.crop_resize_exact(box, (size, size)).int()
            diff = (fast - exact).abs()
            total, count = total + float(diff.sum()), count + diff.numel()
            worst = max(worst, int(diff.max()))
    return total / count, worst, len(paths)


def photo_difference(size: int) -> tuple[float, int]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, "JPEG", quality=90)
    image = EncodedImage(buf.getvalue())
    box = center_square_box(image.height, image.width)
    diff = (
        image.crop_resize(box, (size, size)).int()
        - image.crop_resize_exact(box, (size, size)).int()
    ).abs()
    return float(diff.float().mean()), int(diff.max())


def train(
    demo: Path, args: argparse.Namespace, decode: str, mask: MaskGenerator, seed: int = 0
) -> torch.nn.Module:
    """``args.steps`` steps of SimMIM on demo-100pct with ``decode``; the trained model."""
    from scaling.cell.pretrain import to_model_input
    from scaling.model.simmim import build_simmim
    from scaling.train.optim import build_pretrain_optimizer

    torch.manual_seed(seed)
    model = build_simmim(args.model, img_size=args.image_size)
    optimizer = build_pretrain_optimizer(model, lr=args.lr, weight_decay=0.05)
    loader = build_pretrain_loader(
        manifest=demo / "manifests" / "demo-100pct.parquet", root=demo,
        image_size=args.image_size, mask=mask, batch_size=args.batch, seed=seed,
        num_workers=args.workers, decode=decode,
    )  # fmt: skip
    model.train()
    for batch in itertools.islice(loader, args.steps):
        images, masks = to_model_input(batch, torch.device("cpu"))
        loss = model(images, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loader.close()
    return model


def val_loss(model: torch.nn.Module, demo: Path, args, decode: str, mask) -> float:
    from scaling.cell.pretrain import validation_loss

    loader = build_val_loader(
        manifest=demo / "manifests" / "demo-val.parquet", root=demo, image_size=args.image_size,
        mask=mask, batch_size=64, num_workers=0, decode=decode,
    )  # fmt: skip
    return validation_loss(model, loader, torch.device("cpu"), None)


def main(argv: list[str] | None = None) -> int:
    from subsets.demo import build_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--model", default="swinv2-nano")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--mask-patch-size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--pixel-images", type=int, default=None, help="default: all")
    parser.add_argument("--seeds", type=int, default=3, help="training runs per mode")
    args = parser.parse_args(argv)
    os.environ.setdefault("MIMSCALE_DEVICE", "cpu")
    demo = build_demo(
        Path(os.environ.get("MIMSCALE_BENCH_CACHE", tempfile.gettempdir())) / "mimscale-demo"
    )
    images = sorted(demo.glob("train/*/*")) + sorted(demo.glob("val/*"))
    images = [p for p in images if p.suffix != ".csv"][: args.pixel_images]
    mean, worst, n = pixel_differences(images, args.image_size)
    print(f"pixels, demo set ({n:,} images, {args.image_size} px): |fast - exact| mean "
          f"{mean:.2f}, max {worst} grey levels")  # fmt: skip
    mean, worst = photo_difference(192)
    print(f"pixels, a 427×640 photograph at 192 px (1/2-scale DCT): mean {mean:.2f}, max {worst}")
    from scaling.model.sizes import get_spec

    patch = get_spec(args.model).patch_size
    mask = MaskGenerator(input_size=args.image_size, mask_patch_size=args.mask_patch_size,
                         model_patch_size=patch, mask_ratio=0.6)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"fast": [], "exact": []}
    for seed in range(args.seeds):  # seeds of the model and the data order
        for trained in runs:
            model = train(demo, args, trained, mask, seed)
            runs[trained].append({v: val_loss(model, demo, args, v, mask) for v in runs})
    print(
        f"val loss after {args.steps} steps of {args.model} at {args.image_size} px, mean of "
        f"{args.seeds} seed(s) (rows: decode in training; columns: decode in validation)"
    )
    print(f"{'':>14}{'val fast':>12}{'val exact':>12}")
    mean = {t: {v: float(np.mean([r[v] for r in rs])) for v in runs} for t, rs in runs.items()}
    for trained, row in mean.items():
        print(f"{'train ' + trained:>14}{row['fast']:>12.5f}{row['exact']:>12.5f}")
    gaps = [f["exact"] - e["exact"] for f, e in zip(runs["fast"], runs["exact"], strict=True)]
    spread = [r["exact"] for rs in runs.values() for r in rs]
    print(
        f"fast-trained minus exact-trained, on exact val pixels: {np.mean(gaps):+.5f} "
        f"({np.mean(gaps) / mean['exact']['exact']:+.2%}); per seed "
        f"{', '.join(f'{g:+.5f}' for g in gaps)}; seed-to-seed range of the losses "
        f"{max(spread) - min(spread):.5f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
