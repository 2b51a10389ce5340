"""The one user-facing error type of the subset builder.

A :class:`scaling.errors.UserError`: the CLI prints ``error: <message>`` and exits 2.
Messages name what is wrong and where (file and line, folder, manifest).
"""

from __future__ import annotations

from pathlib import Path

from scaling.errors import UserError


class SubsetError(UserError):
    """Bad input to the subset builder: a missing root, an unparsable listing, …"""


def no_file(what: str, path: Path) -> SubsetError:
    """The error for a ``what`` (manifest, listing, val CSV) at ``path`` that is no file:
    a folder, a symbolic link that leads nowhere (a loop, a missing target), or nothing."""
    if path.is_dir():
        return SubsetError(f"{what} {path}: is a folder, not a file")
    if path.is_symlink():
        return SubsetError(f"{what} {path}: a symbolic link that leads to no file (a loop?)")
    return SubsetError(f"{what} {path}: no such file")
