"""The one user-facing error type of the subset builder.

The CLI prints ``error: <message>`` and exits with ``exit_code`` (2: bad input).
Messages name what is wrong and where (file and line, folder, manifest).
"""

from __future__ import annotations


class SubsetError(Exception):
    """Bad input to the subset builder: a missing root, an unparsable listing, …"""

    exit_code = 2
