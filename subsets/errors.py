"""The one user-facing error type of the subset builder.

A :class:`scaling.errors.UserError`: the CLI prints ``error: <message>`` and exits 2.
Messages name what is wrong and where (file and line, folder, manifest).
"""

from __future__ import annotations

from scaling.errors import UserError


class SubsetError(UserError):
    """Bad input to the subset builder: a missing root, an unparsable listing, …"""
