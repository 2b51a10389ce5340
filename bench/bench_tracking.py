"""What the trackers cost a stage: start-up (opening the runs) and each log interval.

Runs :class:`scaling.cell.tracking.StageTracker` with each tracker alone and all three
(TensorBoard event files, MLflow's local SQLite store, W&B offline) in a temporary folder
and prints the seconds to open and close a stage's runs and the milliseconds per logged
interval (train loss, lr, images/s, and a validation value every 10th), against a
baseline of the same loop with no tracker.

    python bench/bench_tracking.py [--logs 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

from scaling.cell.tracking import StageTracker, prepare_tracking
from scaling.config.schema import TrackingConfig

CONFIGS = {
    "none": {},
    "tensorboard": {"tensorboard": True},
    "mlflow": {"mlflow": ""},
    "wandb": {"wandb": "offline"},
    "all three": {"tensorboard": True, "mlflow": "", "wandb": "offline"},
}


def measure(name: str, switches: dict, logs: int) -> tuple[float, float, float]:
    """(seconds to open, ms per log interval, seconds to close) of one stage's tracker."""
    recipe = SimpleNamespace(batch_size=2048, base_lr=1e-4, mask_ratio=0.6, schedule="cosine",
                             image_size=192)  # fmt: skip
    cell = SimpleNamespace(model="swinv2-b", data="in1k-10pct", iterations=logs, seed=0,
                           pretrain=recipe)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        cfg = TrackingConfig(**switches).resolved("bench", out)
        prepare_tracking(cfg)
        t0 = time.perf_counter()
        tracker = StageTracker(cfg, "pretrain", f"s-{name[:3]}", cell, local_root=f"{out}/t")
        t1 = time.perf_counter()
        for step in range(1, logs + 1):
            fields = {"phase": "pretrain", "step": step, "train_loss": 1.0 / step, "lr": 1e-4,
                      "images_per_s": 900.0}  # fmt: skip
            if step % 10 == 0:
                fields |= {"val_loss": 0.5, "val_step": step}
            tracker(fields)
        t2 = time.perf_counter()
        tracker.final({"train_loss": 0.1, "val_loss": 0.5, "wall_s": 10.0})
        tracker.close(True)
        t3 = time.perf_counter()
    return t1 - t0, (t2 - t1) / logs * 1e3, t3 - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=200, help="log intervals per stage")
    args = parser.parse_args()
    print(f"{'trackers':<12} {'open s':>7} {'ms/log':>7} {'close s':>8}  ({args.logs} logs)")
    for name, switches in CONFIGS.items():
        opened, per_log, closed = measure(name, switches, args.logs)
        print(f"{name:<12} {opened:>7.2f} {per_log:>7.2f} {closed:>8.2f}")


if __name__ == "__main__":
    main()
