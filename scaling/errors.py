"""User-facing errors of the model side (sizes, schedules).

Each carries ``exit_code = 2`` so the CLI prints ``error: <message>`` instead of a
traceback; messages start with the dotted config key they are about.
"""

from __future__ import annotations


class ModelError(ValueError):
    """A bad model name, image size or checkpoint for a model."""

    exit_code = 2


class ScheduleError(ValueError):
    """A bad learning-rate schedule name or schedule arguments."""

    exit_code = 2
