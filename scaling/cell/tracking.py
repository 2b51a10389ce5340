"""Experiment trackers of a stage — TensorBoard, MLflow, Weights & Biases — and its speed.

Rank 0 of every stage (one process or many) opens a :class:`StageTracker` for the
trackers the study's ``[tracking]`` switches on, each through its library's own API
(:mod:`scaling.cell.trackers`): ``torch.utils.tensorboard.SummaryWriter`` (event files, no
server), ``MlflowClient`` (a local SQLite store or a server) and ``wandb.init``
(``offline`` writes files and needs no network). The tracker is a
:data:`~scaling.cell.context.Reporter`: it sees the progress a phase reports once per log
interval (train loss, lr, images/s, a ``grad_norm`` once the loop reports one, the last
validation values with their step) and logs them as curves; at the end it logs the
stage's final metrics and closes the run as finished or failed. A retried stage continues
the same MLflow / W&B run (found by its stage id). Output goes under
``<output_dir>/tracking/``; for an object-store output it is written to a local folder
and uploaded when the stage ends.

:class:`Throughput` measures a phase's images/s, the time to its last step and the share
of the time the loop waited for its next batch (:class:`WaitedBatches`): near 0 when the
accelerator is the bottleneck, large when the data loader is.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from scaling.config.schema import TrackingConfig
from scaling.errors import UserError

log = logging.getLogger(__name__)

Metrics = dict[str, float]


class TrackingError(UserError):
    """A tracker that cannot be used (its library is not installed)."""


BACKENDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
"""``[tracking]`` key → (module it imports, its PyPI package)."""
VAL_METRICS = {
    "pretrain": {"val_loss": "val/loss"},
    "finetune": {"finetune_top1": "val/top1", "finetune_top5": "val/top5"},
}
"""A phase's validation values in its progress → their curve names."""


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there: an import known to fail
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_tracking(cfg: TrackingConfig) -> None:
    """Refuse trackers whose library is missing, before anything runs (no import)."""
    for key in cfg.enabled:
        module, package = BACKENDS[key]
        if not _installed(module):
            raise TrackingError(
                f"tracking.{key}: the study turns on {key}, but the {package!r} package is "
                f"not installed; pip install 'mimscale[tracking]' (or pip install {package}), "
                f"or switch it off in [tracking]"
            )


def prepare_tracking(cfg: TrackingConfig) -> None:
    """Before a grid starts: check the libraries, and create the MLflow experiment (and a
    local store's database) once, so parallel stages do not race to set it up."""
    check_tracking(cfg)
    if cfg.mlflow is not None:
        from scaling.cell.trackers import experiment

        experiment(cfg.mlflow, cfg.project)


DATA_WAIT_WARN = 0.25
"""A log interval whose loop waited on data this share of the time is logged (once a phase)."""
DATA_HINT = (
    "more data.num_workers and resources.cpus; a pack (`mimscale subsets pack`, with --pixels "
    "to decode each image once)"
)


class WaitedBatches:
    """The loader's batches, timing how long each ``next`` blocks the training loop."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches: Iterator[Any] = iter(batches)
        self.waited_s = 0.0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.waited_s += time.perf_counter() - start


class Throughput:
    """Images/s over the last log interval, the time left at the rate since the start, and
    the share of the interval spent waiting for batches (``data_wait``, 0–1)."""

    def __init__(
        self,
        batch_size: int,
        step: int,
        iterations: int,
        batches: WaitedBatches | None = None,
        *,
        hint: str = DATA_HINT,
    ) -> None:
        self.batch_size, self.iterations, self.batches = batch_size, iterations, batches
        self.hint = hint
        self.start = self.last = (step, time.time())
        self.last_wait = (time.perf_counter(), 0.0)
        self.warned = False

    def tick(self, step: int) -> dict[str, float]:
        """Progress fields at ``step``: ``images_per_s``, ``eta_s``, ``data_wait`` and
        ``time`` (Unix s)."""
        now = time.time()
        (s0, t0), (s1, t1) = self.start, self.last
        self.last = (step, now)
        fields = {"time": now}
        if step > s1 and now > t1:
            fields["images_per_s"] = (step - s1) * self.batch_size / (now - t1)
        if step > s0 and now > t0:
            fields["eta_s"] = max(0, self.iterations - step) * (now - t0) / (step - s0)
        if self.batches is not None:
            clock, waited = time.perf_counter(), self.batches.waited_s
            (c1, w1), self.last_wait = self.last_wait, (clock, waited)
            if step > s1 and clock > c1:
                fields["data_wait"] = min(1.0, max(0.0, (waited - w1) / (clock - c1)))
                if s1 > s0:  # not the first interval: it includes the loader's start
                    self._warn(s1, step, fields["data_wait"])
        return fields

    def _warn(self, first: int, step: int, share: float) -> None:
        if share >= DATA_WAIT_WARN and not self.warned:
            self.warned = True
            log.warning(
                "steps %d–%d waited on data %.0f%% of the time: the data loader is the "
                "bottleneck (%s)", first, step, 100 * share, self.hint,
            )  # fmt: skip


def _run_name(cfg: TrackingConfig, kind: str, stage_id: str, cell: Any) -> str:
    return cfg.run_name.format(
        kind=kind,
        stage_id=stage_id,
        model=cell.model,
        data=cell.data,
        iterations=cell.iterations,
        seed=cell.seed,
        study=cfg.project,
    )


def _params(kind: str, stage_id: str, cell: Any) -> dict[str, Any]:
    p = cell.pretrain
    return {
        "kind": kind,
        "stage_id": stage_id,
        "model": cell.model,
        "data": cell.data,
        "iterations": cell.iterations,
        "seed": cell.seed,
        "batch_size": p.batch_size,
        "base_lr": p.base_lr,
        "mask_ratio": p.mask_ratio,
        "schedule": p.schedule,
        "image_size": p.image_size,
    }


class StageTracker:
    """Rank 0's trackers of one stage; call it with progress fields (a Reporter)."""

    def __init__(
        self,
        cfg: TrackingConfig,
        kind: str,
        stage_id: str,
        cell: Any,
        *,
        local_root: str | None,
        upload: Callable[[Path], None] | None = None,
    ) -> None:
        check_tracking(cfg)
        self.step = 0
        self._val_step = self._train_step = -1
        self._upload = upload if local_root is None else None
        self.root = Path(local_root or tempfile.mkdtemp(prefix="mimscale-tracking-"))
        name, params = _run_name(cfg, kind, stage_id, cell), _params(kind, stage_id, cell)
        from scaling.cell.trackers import MLflowRun, TensorBoardRun, WandbRun

        makers: dict[str, Callable[[], Any]] = {
            "tensorboard": lambda: TensorBoardRun(self.root, name, params),
            "mlflow": lambda: MLflowRun(cfg.mlflow or "", cfg.project, name, params),
            "wandb": lambda: WandbRun(cfg.wandb, self.root, cfg.project, name, params),
        }
        self.backends: dict[str, Any] = {}
        for key in cfg.enabled:
            try:
                self.backends[key] = makers[key]()
            except Exception as err:  # e.g. W&B online without a key: the stage goes on
                log.warning("tracking.%s: cannot start (%s: %s); this stage goes on without "
                            "it", key, type(err).__name__, err)  # fmt: skip
        log.info("stage %s tracked in %s", stage_id, ", ".join(self.backends) or "nothing")

    def __call__(self, fields: dict[str, Any]) -> None:
        """Curves from one progress report: train loss, lr, images/s, new validation values."""
        step = fields.get("step")
        if step is None or fields.get("phase") == "done":
            return
        if step > self._train_step:  # the end of a phase repeats its last log
            self._train_step = int(step)
            names = {"train_loss": "train/loss", "lr": "lr", "images_per_s": "images_per_s",
                     "grad_norm": "train/grad_norm", "data_wait": "data_wait"}  # fmt: skip
            self._log({n: fields[k] for k, n in names.items() if _finite(fields.get(k))}, step)
        val_step = fields.get("val_step")
        if val_step is not None and val_step != self._val_step:
            self._val_step = int(val_step)
            names = VAL_METRICS[fields.get("phase") or "pretrain"]
            val = {name: fields[k] for k, name in names.items() if _finite(fields.get(k))}
            self._log(val, self._val_step)

    def final(self, row: dict[str, Any]) -> None:
        """The stage's final metrics (its result row's numbers), at its last step."""
        keys = ("train_loss", "val_loss", "finetune_top1", "finetune_top5", "wall_s", "gpu_hours")
        self._log({f"final/{k}": row[k] for k in keys if _finite(row.get(k))}, self.step)

    def close(self, ok: bool) -> None:
        """End every run (finished or failed) and upload a remote output's files."""
        for key, backend in self.backends.items():
            try:
                backend.close(ok)
            except Exception as err:  # a tracker's failure never fails the stage
                log.warning("tracking.%s: closing the run failed: %s", key, err)
        if self._upload is not None:
            self._upload(self.root)
            shutil.rmtree(self.root, ignore_errors=True)

    def _log(self, metrics: Metrics, step: int) -> None:
        if not metrics:
            return
        self.step = max(self.step, step)
        for key, backend in list(self.backends.items()):
            try:
                backend.log(metrics, step)
            except Exception as err:  # a busy store, a lost server: never the stage's end
                log.warning("tracking.%s: logging failed (%s: %s); dropped for this stage",
                            key, type(err).__name__, err)  # fmt: skip
                del self.backends[key]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
