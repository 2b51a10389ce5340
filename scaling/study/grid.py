"""Run a study's stages on Ray Tune: one trial per stage. The only module that imports ray.

Each trial runs :func:`scaling.cell.run.run_stage` for its stage, with its cell's
resources (a placement group of one bundle; ``workers > 1`` runs Ray Train's
TorchTrainer, one DDP rank per worker, inside the trial). A searcher hands Tune each
stage once its input exists — a branch once its trunk wrote the fork checkpoint, a
fine-tune once its encoder is complete — so dependencies cost no slot. A crashed trial is
retried (``FailureConfig``) and resumes from the stage's last checkpoint in the store;
a user error fails the stage at once. Resume across driver restarts and growth of a
study are the store's job, not Tune's: the caller passes only the stages that are not
complete, and each run is a fresh Tune experiment under ``<output_dir>/ray``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune import Callback, PlacementGroupFactory
from ray.tune.search import Searcher

from scaling.config.parse import ConfigError, from_dict
from scaling.config.schema import CellConfig
from scaling.errors import UserError
from scaling.study.cluster import CONNECT_TIMEOUT_S, join_error, probe, requested_address
from scaling.study.interrupt import raise_pending
from scaling.study.reaper import Reaper
from scaling.study.store import ResultStore

log = logging.getLogger(__name__)

ENV_PREFIX = "MIMSCALE_"
"""Driver environment variables with this prefix are set in every trial (fault injection)."""

FORWARDED_ENV = ("AWS_", "WANDB_", "MLFLOW_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")
"""Prefixes of the driver's variables a joined cluster's workers get (:func:`forwarded_env`)."""

INTERRUPTED = "interrupted"
"""A stage's status when a signal stopped the run in its middle (it resumes next time)."""

ProgressHook = Callable[[Collection[str]], None]
"""Called every few seconds with the ids of the cells in flight."""


@dataclass
class GridResult:
    completed: list[str] = field(default_factory=list)
    """Stage ids."""
    failed: dict[str, str] = field(default_factory=dict)
    """stage_id → error of its last attempt (or of its upstream stage)."""
    retries: dict[str, int] = field(default_factory=dict)
    """stage_id → attempts that failed and were retried."""
    wall_s: float = 0.0
    max_concurrent: int = 0


def cell_bundle(cell: CellConfig) -> dict[str, float]:
    """What one cell holds on the cluster (all its workers together)."""
    r = cell.resources
    return {"CPU": r.cpus * r.workers, "GPU": r.gpus * r.workers}


def placement(cell: CellConfig) -> PlacementGroupFactory:
    """The trial's placement group: the whole cell for one worker; for DDP only the trial's
    own driver, since Ray Train (V2) places its workers in a placement group of its own."""
    r = cell.resources
    if r.workers == 1:
        bundle = {"CPU": r.cpus} | ({"GPU": r.gpus} if r.gpus else {})
        return PlacementGroupFactory([bundle])
    return PlacementGroupFactory([{"CPU": 0.01}])


def fit_count(total: dict[str, float], need: dict[str, float]) -> int:
    """How many cells of footprint ``need`` the cluster's ``total`` holds at once."""
    counts = [math.floor(total.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 0


def concurrency(cells: Sequence[CellConfig], total: dict[str, float], cap: int = 0) -> int:
    """Trials to run at once: as many of the smallest cell as the cluster holds (or ``cap``).

    Tune starts a trial only once its placement group is ready, so a larger cell simply
    waits for room; a limit near the cluster's capacity keeps pending trial drivers few.
    """
    fits = [fit_count(total, cell_bundle(c)) for c in cells]
    too_big = [c for c, n in zip(cells, fits, strict=True) if n == 0]
    if too_big:
        c = too_big[0]
        need = cell_bundle(c)
        short = next(k for k, v in need.items() if v and total.get(k, 0.0) < v)
        key = {"CPU": "resources.cpus", "GPU": "resources.gpus"}[short]
        per = "" if c.resources.workers == 1 else f" ({c.resources.workers} workers)"
        raise ConfigError(
            key,
            f"a {c.model} cell needs {need[short]:g} {short}{per} but the Ray cluster has "
            f"{total.get(short, 0.0):g}; lower {key} or join a larger cluster (--address)",
        )
    n = max(fits)
    return min(n, cap) if cap > 0 else n


class _Progress(Callback):
    """Tracks trial lifecycles and calls the progress hook every ``interval_s``."""

    def __init__(self, hook: ProgressHook | None, interval_s: float) -> None:
        self.hook, self.interval_s = hook, interval_s
        self.running: set[str] = set()
        self.retries: dict[str, int] = {}
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: the driver-side hook (it
        holds the console stream of the live view) stays out of the copy."""
        return {**self.__dict__, "hook": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.config["stage_id"])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        stage_id = trial.config["stage_id"]
        self.retries[stage_id] = self.retries.get(stage_id, 0) + 1
        self.running.discard(stage_id)
        log.warning("stage %s failed; retrying from its last checkpoint", stage_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.config["stage_id"])
        self.tick(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.config["stage_id"])
        self.tick(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.tick()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.hook is not None and (force or now - self._last >= self.interval_s):
            self._last = now
            self.hook(frozenset(self.running))


def _report_to_tune(metrics: dict[str, Any]) -> None:
    tune.report({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})


def _set_env(env: dict[str, str]) -> None:
    """The driver's MIMSCALE_* variables, and no others (a reused process may hold old ones)."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env]:
        del os.environ[key]
    os.environ.update(env)


def _set_threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _ddp_worker(config: dict[str, Any]) -> None:
    """One DDP rank of a multi-worker stage (runs in a Ray Train worker)."""
    from ray import train
    from ray.train.torch import get_device

    _set_env(config["env"])
    job = config["job"]
    cell = from_dict(CellConfig, job["cell"])
    _set_threads(cell.resources.cpus)
    ctx = train.get_context()
    # No ray.train.report: Train V2 makes it a barrier of all ranks, and only rank 0
    # writes progress; the driver reads progress.json from the store instead.
    try:
        _run_job(
            job,
            cell,
            ResultStore(config["store"]),
            rank=ctx.get_world_rank(),
            world_size=ctx.get_world_size(),
            device=get_device(),  # this worker's GPU (cpu without one)
        )
    except UserError as err:
        # one error type crosses the worker group (a ConfigError's arguments do not
        # survive pickling): _run_ddp finds it among the worker failures
        raise UserError(f"rank {ctx.get_world_rank()}: {err}") from None


def _run_job(job: dict[str, Any], cell: CellConfig, store: ResultStore, **kw: Any) -> Any:
    from scaling.cell.run import run_stage

    return run_stage(
        job["kind"],
        job["stage_id"],
        cell,
        store,
        pretrain_id=job["pretrain_id"],
        forks=job["forks"],
        prefix_step=job["prefix_step"],
        **kw,
    )


def _run_ddp(job: dict[str, Any], cell: CellConfig, store: ResultStore, env: dict) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = cell.resources
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"job": job, "store": store.uri, "env": env},
        scaling_config=ScalingConfig(
            num_workers=r.workers,
            use_gpu=r.gpus > 0,
            resources_per_worker={"CPU": r.cpus} | ({"GPU": r.gpus} if r.gpus else {}),
        ),
        # Tune retries the whole stage; Train itself does not.
        run_config=RunConfig(
            name=f"ddp-{job['stage_id']}-{int(time.time())}",
            storage_path=_storage_path(store),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # Ray Train's WorkerGroupError: each rank's error by rank
        failures = getattr(err, "worker_failures", None) or {}
        user = [e for _, e in sorted(failures.items()) if isinstance(e, UserError)]
        if user:  # the same input fails the same way again: not a crash to retry
            raise UserError("; ".join(str(e) for e in user)) from None  # every rank's
        raise


def _stage_trainable(
    config: dict[str, Any], *, jobs: dict[str, dict[str, Any]], store_uri: str, env: dict
) -> None:
    """The Tune trial of one stage."""
    _set_env(env)
    job = jobs[config["stage_id"]]
    kind, stage_id = job["kind"], job["stage_id"]
    cell = from_dict(CellConfig, job["cell"])
    store = ResultStore(store_uri)
    if store.stage_complete(kind, stage_id):  # a retry after the result was written
        tune.report({"phase": "done"})
        return
    try:
        _check_digests(job, cell, store)
        if cell.resources.workers > 1:
            _run_ddp(job, cell, store, env)
            row = store.stage_row(kind, stage_id) or {}
        else:
            _set_threads(cell.resources.cpus)
            row = _run_job(job, cell, store, report=_report_to_tune)
    except UserError as err:  # a crash is not caught: Tune retries it from its checkpoint
        # A user error (bad data, non-finite loss) fails the same way again: no retry.
        store.write_stage_failure(kind, stage_id, _fields(kind, cell), error_line(err))
        tune.report({"phase": "failed"})
        return
    _report_to_tune({"phase": "done", "val_loss": row.get("val_loss")})


def _fields(kind: str, cell: CellConfig) -> dict[str, Any]:
    """A failed stage's row: what is known before it runs."""
    return cell.row_fields() if kind == "pretrain" else {"target": cell.data_config.finetune_train}


def _check_digests(job: dict[str, Any], cell: CellConfig, store: ResultStore) -> None:
    """Refuse a stage whose manifests changed after the driver planned it (a rebuild while
    the grid ran): its id, and every result it would write, stand for the old ones."""
    from subsets.manifest import read_manifest_info

    record = store.read_json(f"stages/{job['kind']}/{job['stage_id']}/stage.json") or {}
    planned = record.get("identity", {}).get("digests")
    if planned is None:
        return
    # the footer's digests: the driver checked every row against them before it planned
    now = {n: read_manifest_info(cell.data_config.manifest(n)).digest for n in cell.subsets()}
    changed = sorted(n for n in planned if planned[n] != now.get(n))
    if changed:
        raise ConfigError(
            "data.manifest_dir",
            f"stage {job['stage_id']}: manifests changed since it was planned: "
            f"{', '.join(changed)}",
        )


class _StageSearcher(Searcher):
    """Hands Tune the stages in order, each once its input exists: a branch when its trunk
    has written its fork checkpoint (or ended), a fine-tune when its encoder is complete.
    A stage whose upstream failed fails here without a trial. Until something is ready it
    answers None and Tune asks again (no trial sits waiting on a slot)."""

    def __init__(self, order: Sequence[dict[str, Any]], store: ResultStore) -> None:
        super().__init__()
        self.pending = list(order)
        self.store = store
        self.trials: dict[str, str] = {}
        self.ran = {job["stage_id"] for job in order}
        """Stages of this experiment: a failure the store holds for one of them is an
        earlier run's until a trial of this experiment ends (it runs again here)."""
        self.ended: set[str] = set()
        self.crashed: set[str] = set()
        self.failed: dict[str, str] = {}

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the store is the state (a new run reads what is done from it).
        Tune's default warns "save not implemented" on stderr at every run."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for job in list(self.pending):
            ready = self._ready(job)
            if ready is None:
                continue
            self.pending.remove(job)
            if ready is not True:
                self._fail(job, ready)
                continue
            self.trials[trial_id] = job["stage_id"]
            return {"stage_id": job["stage_id"]}
        return Searcher.FINISHED if not self.pending else None

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        if trial_id in self.trials:
            self.ended.add(self.trials[trial_id])
            if error:
                self.crashed.add(self.trials[trial_id])

    def _ended(self, stage_id: str) -> str | None:
        """'complete', 'failed' (with its error in self.failed) or None (not yet)."""
        if stage_id in self.crashed or stage_id in self.failed:
            return "failed"
        row = self.store.stage_row("pretrain", stage_id)
        status = None if row is None else row.get("status")
        if status == INTERRUPTED or (
            status == "failed" and stage_id in self.ran and stage_id not in self.ended
        ):
            return None  # an earlier run's end: it runs again in this experiment
        return status

    def _ready(self, job: dict[str, Any]) -> bool | str | None:
        """True: run it; a message: its upstream failed; None: wait."""
        if job["kind"] in ("finetune", "diagnostics"):  # once its encoder is complete
            ended = self._ended(job["pretrain_id"])
            if ended == "complete":
                return True
            return None if ended is None else f"pre-training stage {job['pretrain_id']} failed"
        trunk = job.get("trunk_id")
        if not trunk or self.store.exists(f"stages/pretrain/{job['stage_id']}/checkpoint.pt"):
            return True
        return True if self._ended(trunk) is not None else None  # trunk gone: run on its own

    def _fail(self, job: dict[str, Any], message: str) -> None:
        self.failed[job["stage_id"]] = message
        cell = from_dict(CellConfig, job["cell"])
        fields = _fields(job["kind"], cell) | {"pretrain_id": job.get("pretrain_id")}
        self.store.write_stage_failure(job["kind"], job["stage_id"], fields, message)


def error_line(err: BaseException) -> str:
    """The last line of an error (a Ray task error carries the remote traceback before it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        last
        if ": " in last and last.split(":")[0].isidentifier()
        else (f"{type(err).__name__}: {last}")
    )


def _storage_path(store: ResultStore) -> str:
    local = store.local_path("ray")
    return local if local is not None else f"{store.uri.rstrip('/')}/ray"


_reaper: Reaper | None = None


def connect(
    address: str | None, *, verbose: bool = False, timeout_s: float = CONNECT_TIMEOUT_S
) -> bool:
    """Join ``address`` (or RAY_ADDRESS), else start a local instance; True if we started one.

    A cluster address is probed first (:func:`scaling.study.cluster.probe`, at most
    ``timeout_s``) and Ray's errors are worded for a user (ClusterError, exit 2). The
    local instance is started with ``address="local"``: a new one even when a ``ray
    start`` cluster runs on this machine (``ray.init()`` without an address would join
    that one, which has its own resources and owner), in a private temp folder that a
    watchdog (:mod:`scaling.study.reaper`) removes with every process of the instance
    when the driver ends, however it ends. Its authentication mode is chosen before ray
    is imported (``verbs._local_ray_auth``). The driver's own SIGTERM handler (see
    :mod:`scaling.study.interrupt`) survives ``ray.init``, which installs its own.
    """
    global _reaper
    if ray.is_initialized():
        return False
    address, origin = requested_address(address)
    common: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "configure_logging": True,
    }
    handler = signal.getsignal(signal.SIGTERM)
    if address:
        probe(address, origin, timeout_s)
        log.info("joining the Ray cluster at %s", address)
        env = forwarded_env()
        try:
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, **common)
        except Exception as err:  # ConnectionError, ValueError (ray[client]), auth errors
            raise join_error(address, origin, err) from None
        finally:
            _keep_handler(handler)
        return False
    temp = os.path.join(tempfile.gettempdir(), f"mimscale-ray-{os.getpid()}")
    _reaper = Reaper(temp)
    try:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _temp_dir=temp,
            **common,
        )
    finally:
        _keep_handler(handler)
    return True


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's storage and tracker settings (:data:`FORWARDED_ENV`): the
    workers of a cluster joined by address start from their node's environment, not the
    driver's, so the job's ``runtime_env`` gives them these (``AWS_ENDPOINT_URL`` and the
    keys the preflight checked ``output_dir`` and the pack with, the W&B / MLflow
    settings; paths such as ``TORCH_HOME`` are the node's own). A local instance inherits
    the driver's environment whole."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV)}


def _keep_handler(handler: Any) -> None:
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGTERM, handler)


def disconnect(started: bool) -> None:
    """Shut down the local instance ``connect`` started (its watchdog then cleans up)."""
    global _reaper
    if not started:
        return
    try:
        ray.shutdown()
    finally:
        if _reaper is not None:
            _reaper.close()
            _reaper = None


def cluster_concurrency(cells: Sequence[CellConfig], cap: int = 0) -> int:
    """:func:`concurrency` on the connected cluster (ConfigError naming the resource key)."""
    return concurrency(cells, ray.cluster_resources(), cap)


def _quiet() -> None:
    """Ray Tune's own console output: off (we print our own table). Its per-trial
    result.json files stay, under ``<output_dir>/ray``, for debugging."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _check_shared_storage(store: ResultStore) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and store.local_path() is not None:
        log.warning(
            "output_dir %s is a local path on a %d-node cluster: every node must see it "
            "(a shared file system), or use a URI such as s3://… or gs://…",
            store.uri,
            len(nodes),
        )


def _tuner(
    jobs: Sequence[dict[str, Any]],
    store: ResultStore,
    searcher: _StageSearcher,
    max_concurrent: int,
    max_failures: int,
    progress: _Progress,
) -> tune.Tuner:
    """One Tune experiment: a trial per stage, each with its cell's placement group."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    by_id = {j["stage_id"]: j for j in jobs}
    cells = {i: from_dict(CellConfig, j["cell"]) for i, j in by_id.items()}
    trainable = tune.with_resources(
        tune.with_parameters(_stage_trainable, jobs=by_id, store_uri=store.uri, env=env),
        resources=lambda config: placement(cells[config["stage_id"]]),
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=len(jobs),
            max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: t.config["stage_id"],
            trial_dirname_creator=lambda t: t.config["stage_id"],
            # a stage's process is reused by the next stage of the same shape: no
            # second torch import (seconds per stage on a small machine)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("run-%Y%m%d-%H%M%S"),
            storage_path=_storage_path(store),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[progress],
            verbose=0,
        ),
    )


def _collect(
    grid: Any, jobs: dict[str, dict[str, Any]], store: ResultStore, result: GridResult
) -> None:
    """Completed and failed stages of a finished experiment; failures get their row."""
    for trial_result in grid:
        stage_id = trial_result.config["stage_id"]
        kind = jobs[stage_id]["kind"]
        if trial_result.error is None and store.stage_complete(kind, stage_id):
            result.completed.append(stage_id)
            continue
        err = trial_result.error
        row = store.stage_row(kind, stage_id) or {}
        message = error_line(err) if err else row.get("error") or "finished without a result"
        result.failed[stage_id] = message
        cell = from_dict(CellConfig, jobs[stage_id]["cell"])
        store.write_stage_failure(kind, stage_id, _fields(kind, cell), message)


def run_grid(
    jobs: Sequence[dict[str, Any]],
    store: ResultStore,
    *,
    address: str | None = None,
    max_concurrent: int = 0,
    max_failures: int = 3,
    on_progress: ProgressHook | None = None,
    progress_interval_s: float = 10.0,
    verbose: bool = False,
) -> GridResult:
    """Run the stages ``jobs`` (:meth:`Stage.to_job`, in priority order) as one Tune
    experiment, each once its input exists; returns what completed and failed."""
    result = GridResult()
    if not jobs:
        return result
    _quiet()
    started = connect(address, verbose=verbose)
    t0 = time.monotonic()
    try:
        by_id = {j["stage_id"]: j for j in jobs}
        cells = [from_dict(CellConfig, j["cell"]) for j in jobs]
        _check_shared_storage(store)
        result.max_concurrent = concurrency(cells, ray.cluster_resources(), max_concurrent)
        progress = _Progress(on_progress, progress_interval_s)
        searcher = _StageSearcher(jobs, store)
        tuner = _tuner(jobs, store, searcher, result.max_concurrent, max_failures, progress)
        log.info(
            "running %d stages, up to %d at once, on %s",
            len(jobs),
            result.max_concurrent,
            address or os.environ.get("RAY_ADDRESS") or "a local Ray instance",
        )
        grid = tuner.fit()
        raise_pending()  # a signal stopped Tune: the stages in flight are not failures
        _collect(grid, by_id, store, result)
        result.failed |= searcher.failed
        result.retries = dict(progress.retries)
    finally:
        result.wall_s = time.monotonic() - t0
        disconnect(started)
    return result
