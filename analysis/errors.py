"""The one user-facing error of the analysis stage."""

from __future__ import annotations

from scaling.errors import UserError


class AnalysisError(UserError):
    """Bad input to ``mimscale analyze``: missing or mistyped columns, an unreadable
    table, nothing to analyse, or no browser for ``--png``.

    A :class:`scaling.errors.UserError`: the CLI prints ``error: <message>`` and exits 2.
    """
