"""The one user-facing error of the analysis stage."""

from __future__ import annotations


class AnalysisError(Exception):
    """Bad input to ``mimscale analyze``: missing or mistyped columns, an unreadable
    table, nothing to analyse, or no browser for ``--png``.

    The CLI prints ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 2
