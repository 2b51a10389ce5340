"""The one base of every user-facing error: :class:`UserError` (exit code 2).

A user error is bad input — a study key out of range, a missing manifest, a
non-finite loss from a too-high learning rate — that running again will not fix.
The CLI prints ``error: <message>`` and exits with ``exit_code``; the grid fails
such a cell at once instead of retrying it. Anything else is a bug or a crash and
keeps its traceback (and its retries). The message says what is wrong and where:
the dotted config key, the file and line, the manifest or cell.

This module imports nothing, so every package (``subsets``, ``analysis``, each room
of ``scaling``) derives its errors from it without pulling anything in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class UserError(ValueError):
    """Bad input: the message names what is wrong and where; the CLI exits with 2."""

    exit_code = 2


class ModelError(UserError):
    """A bad model name, image size or checkpoint for a model."""


class ScheduleError(UserError):
    """A bad learning-rate schedule name or schedule arguments."""


class UsageError(UserError):
    """A command-line flag out of range (the verbs' own arguments, not the study's)."""


def decode_text(
    data: bytes, located: Callable[[int, bytes, int], UserError], encoding: str = "utf-8-sig"
) -> str:
    """``data`` as UTF-8 text (a byte-order mark dropped); else ``located(line, raw, byte)``
    raised: the 1-based line of the first bad byte, that line's bytes, the byte."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        end = data.find(b"\n", err.start)
        raw = data[start : end if end >= 0 else len(data)]
        raise located(data.count(b"\n", 0, err.start) + 1, raw, data[err.start]) from None
