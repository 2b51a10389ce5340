"""The three trackers a stage can log to, each through its library's own API.

Each is a run with ``log(metrics, step)`` and ``close(ok)``; the library is imported when
the run starts (:mod:`scaling.cell.tracking` checks that it is installed before anything
runs and decides which runs a stage opens).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

Metrics = dict[str, float]


def experiment(uri: str, project: str) -> tuple[Any, str]:
    """(an MlflowClient for ``uri``, the id of experiment ``project``, created if missing)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not uri:  # MLflow would fall back to ./mlflow.db in whatever folder this runs in
        raise ValueError('no MLflow tracking URI (an unresolved tracking.mlflow = "")')

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(project)
    if exp is not None:
        return client, exp.experiment_id
    try:
        return client, client.create_experiment(project)
    except MlflowException:  # another stage created it meanwhile
        return client, client.get_experiment_by_name(project).experiment_id


class TensorBoardRun:
    """Event files through ``torch.utils.tensorboard.SummaryWriter`` (no server)."""

    def __init__(self, root: Path, name: str, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard" / name))
        self.writer.add_text("params", "\n".join(f"{k}: {v}" for k, v in params.items()))

    def log(self, metrics: Metrics, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self, ok: bool) -> None:
        self.writer.close()


class MLflowRun:
    """A run through ``MlflowClient``; a retried stage continues its run (its stage tag)."""

    def __init__(self, uri: str, project: str, name: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client, exp_id = client, exp_id = experiment(uri, project)
        stage_id = params["stage_id"]
        found = client.search_runs([exp_id], filter_string=f"tags.mimscale_stage = '{stage_id}'")
        if found:  # a retried stage continues its run
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            run = client.create_run(exp_id, run_name=name, tags={"mimscale_stage": stage_id})
            self.run_id = run.info.run_id
            client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log(self, metrics: Metrics, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class WandbRun:
    """A run through ``wandb.init`` (its id: the stage id, so a retry resumes it)."""

    def __init__(
        self, mode: str, root: Path, project: str, name: str, params: dict[str, Any]
    ) -> None:
        import wandb

        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            id=params["stage_id"],
            resume="allow",
            mode=mode,
            dir=str(root),
            config=params,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        # validation values arrive after later train steps: "step" is their x-axis, not
        # W&B's own step counter (which only grows)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, metrics: Metrics, step: int) -> None:
        self.run.log({**metrics, "step": step})

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)
