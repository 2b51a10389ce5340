"""Experiment trackers of a study: ``[tracking]`` (TensorBoard, MLflow, Weights & Biases)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from scaling.config.parse import check

TRACKING_WANDB = ("off", "offline", "online")
RUN_NAME_FIELDS = ("kind", "stage_id", "model", "data", "iterations", "seed", "study")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Experiment trackers every stage logs to (rank 0), through the libraries' own APIs.

    Not part of any stage's id: switching a tracker on reruns nothing.
    """

    tensorboard: bool = False
    """Write TensorBoard event files under ``<output_dir>/tracking/tensorboard``."""
    mlflow: str | None = None
    """MLflow tracking URI; ``""``: a local store, ``<output_dir>/tracking/mlflow.db`` (SQLite,
    MLflow's own local backend)."""
    wandb: str = "off"
    """Weights & Biases: ``off``, ``offline`` (files under output_dir, no network) or ``online``."""
    project: str = ""
    """Project (W&B) / experiment (MLflow) name; empty: the study's name."""
    run_name: str = "{kind}-{model}-{data}-{iterations}-{stage_id}"
    """A run's name; placeholders: kind, stage_id, model, data, iterations, seed, study."""
    log_upload_s: float = 60.0
    """Seconds between uploads of a running stage's log to a remote (object-store) output."""

    def __post_init__(self) -> None:
        check(
            self.wandb in TRACKING_WANDB,
            "wandb",
            f"must be one of {TRACKING_WANDB}, got {self.wandb!r}",
        )
        try:
            self.run_name.format(**dict.fromkeys(RUN_NAME_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as err:
            check(
                False,
                "run_name",
                f"{self.run_name!r} is not a valid template ({type(err).__name__}: {err}); "
                f"placeholders: {', '.join(RUN_NAME_FIELDS)}",
            )
        check(
            0 < self.log_upload_s <= 86400,
            "log_upload_s",
            f"must be in (0, 86400], got {self.log_upload_s}",
        )

    @property
    def enabled(self) -> list[str]:
        """The trackers switched on, by their ``[tracking]`` key."""
        on = {"tensorboard": self.tensorboard, "mlflow": self.mlflow is not None}
        return [k for k, v in {**on, "wandb": self.wandb != "off"}.items() if v]

    def resolved(self, study: str, output_dir: str) -> TrackingConfig:
        """With the study's name as default project and the local MLflow store made a URI."""
        mlflow = self.mlflow
        if mlflow == "":
            check(
                "://" not in output_dir or output_dir.startswith("file://"),
                "mlflow",
                f'"" means a local file store under output_dir, but output_dir is '
                f"{output_dir}; give a tracking server URI (e.g. http://host:5000)",
            )
            local = output_dir.removeprefix("file://").rstrip("/")
            mlflow = "sqlite:///" + str(Path(local, "tracking", "mlflow.db").absolute())
        return dataclasses.replace(self, project=self.project or study, mlflow=mlflow)
