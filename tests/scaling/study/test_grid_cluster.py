"""A Ray cluster of a head and two worker nodes on one machine: a worker node dies in the
middle of the grid; every cell still completes, each exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from study_helpers import tiny_tables, write_study

from scaling.config.load import load_study
from scaling.study.preflight import prepare_run, write_study_record
from scaling.study.store import ResultStore
from scaling.study.tables import write_tables
from scaling.study.verbs import _job_order

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    # No CPUs on the head: every cell runs on a worker node. Fast health checks, so a
    # dead node is noticed in a second or two rather than half a minute.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_worker_node_dies_mid_grid(tmp_path: Path, demo_dir: Path, cluster) -> None:
    head, workers = cluster
    data = demo_dir
    path = write_study(
        tmp_path / "study.toml",
        tiny_tables(
            data,
            tmp_path / "out",
            grid={"iterations": [40, 44, 48, 52]},
            pretrain={"val_interval": 20, "checkpoint_interval": 8, "log_interval": 4},
        ),
    )
    study = load_study(path)
    store = ResultStore(study.output_dir)
    run = prepare_run(study, store)
    write_study_record(store, study, run)
    killed: list[float] = []

    def kill_a_node_when_both_are_busy() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            busy = [
                c
                for c in store.stage_ids("pretrain")
                if store.exists(f"stages/pretrain/{c}/progress.json")
                and not store.stage_complete("pretrain", c)
            ]
            if len(busy) >= 2:
                head.remove_node(workers[0], allow_graceful=False)
                killed.append(time.monotonic())
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_node_when_both_are_busy, daemon=True)
    killer.start()
    from scaling.study.grid import run_grid

    result = run_grid(_job_order(run), store, address=head.address, max_failures=3)
    killer.join(timeout=5)
    assert killed, "no worker node was killed"
    assert len(ray.nodes()) == 3 and sum(n["Alive"] for n in ray.nodes()) == 2

    assert not result.failed, result.failed
    assert sorted(result.completed) == sorted(run.todo)  # each stage once
    assert sum(result.retries.values()) >= 1  # the cell on the dead node ran again
    cells, curves = write_tables(store, run.graph)
    table = cells.to_pandas()
    assert len(table) == 4 and table["cell_id"].is_unique
    assert (table["status"] == "complete").all()
    assert sorted(table["iterations"]) == [40, 44, 48, 52]
    points = curves.to_pandas()
    assert not points.duplicated(["cell_id", "phase", "step", "split", "metric"]).any()
