"""``mimscale run STUDY``: check everything, then run the stages that are not complete.

The order is the contract (README "When things go wrong"): the study and its overrides,
a writable output, manifests whose rows match their digests, the stage graph
(:func:`~scaling.study.preflight.prepare_run`), no live lock, then Ray — joined within
a bounded time and checked to hold a cell — and only then the first write: the study
lock, the study record, the grid, the tables and the report. Ctrl-C and SIGTERM mark
the stages in flight ``interrupted`` and print how to resume (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaling.config.parse import ConfigError
    from scaling.config.schema import StudyConfig
    from scaling.study.preflight import RunSet
    from scaling.study.stages import Stage
    from scaling.study.store import ResultStore

log = logging.getLogger(__name__)

COMPACT_OVER = 24
"""While a grid runs, a study with more cells lists only the ones in flight."""


def _load(args: argparse.Namespace) -> StudyConfig:
    from scaling.config.load import load_study

    return load_study(args.study, args.overrides)


def run_command(args: argparse.Namespace) -> int:
    """Check everything (study, output, manifests, cluster, lock), then run; see README
    "When things go wrong" for the exit codes."""
    from scaling.cell.tracking import check_tracking
    from scaling.study.interrupt import Interrupted, interruptible
    from scaling.study.preflight import prepare_run
    from scaling.study.store import ResultStore

    study = _load(args)
    check_tracking(study.tracking)  # a tracker's library missing: before anything runs
    store = ResultStore(study.output_dir)
    store.check_writable()
    run = prepare_run(study, store)  # every check before the first write
    _refuse_if_locked(args, store)  # before Ray starts: a refusal costs nothing
    try:
        with interruptible():
            return _run_locked(args, study, store, run)
    except Interrupted as stop:
        return _interrupted(args, study, store, run, stop)


def _refuse_if_locked(args: argparse.Namespace, store: ResultStore) -> None:
    from scaling.study.lock import check_free

    if args.wait is None:
        check_free(store)


def _run_locked(
    args: argparse.Namespace, study: StudyConfig, store: ResultStore, run: RunSet
) -> int:
    """Connect (bounded), check resources, take the lock, write, run, summarize."""
    from scaling.study.lock import acquire

    started = _connect(args, study, run) if run.todo else False
    try:
        wait = args.wait is not None
        timeout = None if args.wait in (None, -1.0) else args.wait
        with acquire(store, wait=wait, timeout=timeout, command=" ".join(sys.argv)) as lock:
            code = _run_study(args, study, store, run)
            if lock.lost:  # this process stalled past its lease and another run took over
                print(
                    f"warning: the study lock of {store.uri} was taken over by another run "
                    "while this one ran; check `mimscale status` once that run ends",
                    file=sys.stderr,
                )
            return code
    finally:
        if started:
            from scaling.study.grid import disconnect

            disconnect(started)


def _connect(args: argparse.Namespace, study: StudyConfig, run: RunSet) -> bool:
    """Join or start Ray before anything is written; refuse cells the cluster cannot hold."""
    from scaling.config.parse import ConfigError

    _local_ray_auth(args.address)
    from scaling.study.grid import cluster_concurrency, connect, disconnect

    started = connect(
        args.address,
        verbose=bool(getattr(args, "verbose", False)),
        timeout_s=args.connect_timeout,
    )
    cells = [run.graph.get(i).cell for i in run.todo]
    try:
        cluster_concurrency(cells, study.resources.max_concurrent)
    except ConfigError as err:
        disconnect(started)
        raise _located_setting(args, study, err.key, err.message) from None
    return started


def _located_setting(
    args: argparse.Namespace, study: StudyConfig, key: str, message: str
) -> ConfigError:
    """A ConfigError at the key's line of the study file, or ``(--set)`` when set there."""
    from scaling.config.parse import ConfigError
    from scaling.study.preflight import located

    if any(o.split("=", 1)[0].strip() == key for o in args.overrides):
        return ConfigError(key, message, source=f"{study.source} (--set)")
    return located(study, key, message)


def _run_study(
    args: argparse.Namespace, study: StudyConfig, store: ResultStore, run: RunSet
) -> int:
    from scaling.study.preflight import write_study_record
    from scaling.study.status import format_status, study_status, summary
    from scaling.study.tables import write_tables

    g = run.graph
    print(
        f"study {study.name}: {len(g.cells)} cells = {len(g.pretrain)} pre-training + "
        f"{len(g.finetune)} fine-tuning stages, {len(run.done)} complete, "
        f"{len(run.todo)} to run → {study.output_dir}",
        flush=True,
    )
    write_study_record(store, study, run)
    failed = _run_grid(args, study, store, run) if run.todo else {}
    write_tables(store, g)
    rows = study_status(store, g, running=())
    print(format_status(rows), flush=True)
    if not args.no_report:
        _write_report(study.output_dir)
    print(f"{summary(rows)} → {study.output_dir}", flush=True)
    _warn_bad_images(store, run)
    for stage_id, err in failed.items():
        print(f"error: stage {stage_id} failed: {err}", file=sys.stderr)
    return 1 if failed else 0


BAD_IMAGE_COLUMNS = {"bad_images": "training", "bad_val_images": "validation"}
"""Result columns that count the images a stage skipped (unreadable), by split."""


def _warn_bad_images(store: ResultStore, run: RunSet) -> None:
    """One console line per stage of this run that skipped unreadable images."""
    for stage_id in run.todo:
        stage = run.graph.get(stage_id)
        row = store.stage_row(stage.kind, stage_id) or {}
        counts = [f"{row[k]} {split}" for k, split in BAD_IMAGE_COLUMNS.items() if row.get(k)]
        if counts:
            print(
                f"warning: {stage.kind} stage {stage_id} ({stage.cell.model}, "
                f"{stage.cell.data}) skipped unreadable images: {', '.join(counts)} (each "
                "named in the stage's log)",
                file=sys.stderr,
            )


def _interrupted(
    args: argparse.Namespace, study: StudyConfig, store: ResultStore, run: RunSet, stop: Any
) -> int:
    """After a signal: stages in flight marked ``interrupted``, the tables, how to resume."""
    from scaling.study.status import mark_interrupted

    marked = mark_interrupted(store, run)
    try:
        from scaling.study.tables import write_tables

        write_tables(store, run.graph)
    except Exception as err:  # the marks stand; the tables are rebuilt by the next run
        log.warning("could not rebuild the tables: %s", err)
    again = " ".join(_quote(a) for a in _rerun_argv(args))
    print(
        f"interrupted ({stop.name}): {len(marked)} stages stopped in flight "
        f"({', '.join(marked) or 'none'}); complete stages are kept.\n"
        f"resume with: {again}",
        file=sys.stderr,
        flush=True,
    )
    return stop.exit_code


def _rerun_argv(args: argparse.Namespace) -> list[str]:
    argv = ["mimscale", "run", str(args.study)]
    for override in args.overrides:
        argv += ["--set", override]
    if args.address:
        argv += ["--address", args.address]
    return argv


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _job_order(run: RunSet) -> list[dict]:
    """Stages to run: pre-training by FLOPs, longest first (no long stage starts last and
    leaves the others idle), branches after their trunks, then fine-tuning."""
    from scaling.study.plan import pretrain_flops

    todo = [run.graph.get(i) for i in run.todo]

    def rank(stage: Stage) -> tuple[int, float]:
        if stage.kind != "pretrain":  # fine-tuning, diagnostics
            return 2, 0.0
        return (1 if stage.trunk_id else 0), -pretrain_flops(stage.cell)

    return [s.to_job() for s in sorted(todo, key=rank)]


def _run_grid(
    args: argparse.Namespace, study: StudyConfig, store: ResultStore, run: RunSet
) -> dict[str, str]:
    _local_ray_auth(args.address)
    from scaling.cell.tracking import prepare_tracking
    from scaling.study.grid import run_grid  # imports ray
    from scaling.study.live import LiveView, planned_gpu_hours
    from scaling.study.status import study_status

    # e.g. the MLflow experiment (and a local store's database), once, not per stage
    prepare_tracking(study.tracking.resolved(study.name, study.output_dir))
    # a terminal: the table redrawn in place; a log file: one line per event
    view = LiveView(planned_gpu_hours=planned_gpu_hours(study), compact_over=COMPACT_OVER)

    def on_progress(running: Collection[str]) -> None:
        view.update(study_status(store, run.graph, running))

    result = run_grid(
        _job_order(run),
        store,
        address=args.address,
        max_concurrent=study.resources.max_concurrent,
        max_failures=study.resources.max_failures,
        on_progress=on_progress,
        progress_interval_s=args.progress_interval,
        verbose=bool(getattr(args, "verbose", False)),
    )
    print(
        f"grid: {len(result.completed)} stages completed, {len(result.failed)} failed, "
        f"{sum(result.retries.values())} retries, {result.wall_s:.0f} s "
        f"(up to {result.max_concurrent} at once)",
        flush=True,
    )
    return result.failed


def _local_ray_auth(address: str | None) -> None:
    """Choose token authentication for the local Ray instance that ``run`` starts.

    Since Ray 2.59 a local instance started by ``ray.init()`` uses token
    authentication by default (a shared secret in ``~/.ray/auth_token``, generated
    when missing) and, while ``RAY_AUTH_MODE`` is unset, says so on every start:
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled
    to opt out". Token authentication is right for us: the instance listens on the
    node's address, and without it anyone who reaches it can run code there. So we
    choose it explicitly with Ray's documented switch, ``RAY_AUTH_MODE=token``: the
    same cluster as Ray's default, without the notice. Opting out would silence it
    too, at the cost of that protection, and is left to the user.

    Nothing is set when the user set ``RAY_AUTH_MODE`` (their choice stands) or joins
    a cluster (``--address`` / ``RAY_ADDRESS``: its owner decides; ``grid.connect``
    makes the same local-or-join decision). Ray reads ``RAY_AUTH_MODE`` once, when it
    is imported; set after that, the driver would not send the token that its own
    cluster then demands and ``ray.init`` fails. So this runs before the first
    ``import ray`` and does nothing if ray is already loaded (Ray's default, with
    its notice, applies then).
    """
    if address or os.environ.get("RAY_ADDRESS") or "RAY_AUTH_MODE" in os.environ:
        return
    if "ray" in sys.modules:
        return
    os.environ["RAY_AUTH_MODE"] = "token"


def _write_report(output_dir: str) -> None:
    try:
        from analysis import write_report  # type: ignore[attr-defined]
    except ImportError:
        log.info("no analysis report yet (analysis.write_report is not installed)")
        return
    out = f"{output_dir.rstrip('/')}/report"
    try:
        path = write_report(output_dir, out)
    except Exception as err:  # the grid's results stand without the report
        print(f"warning: the report failed: {type(err).__name__}: {err}", file=sys.stderr)
        return
    print(f"report → {path or out}", flush=True)
