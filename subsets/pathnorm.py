"""One spelling per image: listing paths are normalised before they are keyed.

A listing may name a file as ``./n01/a.JPEG``, ``n01/./a.JPEG`` or ``n01//a.JPEG``; all
are ``n01/a.JPEG`` to the file system. Keys (and so selection) hash the path bytes, so
each alias would be a different image: the same file could land in a subset twice, or
in both ``in22k`` and ``in22k-val``. :func:`normalise_paths` rewrites every alias to
the canonical form a scan of the tree gives (no ``.`` parts, no empty parts), so a
listing made by ``find .`` selects exactly like a scan; two spellings of one file then
meet as a duplicate path, which the source check reports with both lines.

Refused, naming the row: a NUL byte (no file name holds one), and a path ending in
``/`` or ``/.`` (a folder, not an image file). Runs in numpy; only paths holding an
alias other than a leading ``./`` pay for a Python rewrite, done in place (a
normalised path is never longer than its alias).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from subsets.errors import SubsetError
from subsets.packed import ByteStrings

_DOT, _SLASH = ord("."), ord("/")


def first_row_with_byte(strings: ByteStrings, value: int) -> int | None:
    """The first row (in row order) whose bytes hold ``value``, else None."""
    end = int((strings.starts + strings.lengths).max()) if len(strings) else 0
    positions = np.flatnonzero(strings.buf[:end] == value)  # not the zero slack at the end
    if not len(positions):
        return None
    order = np.argsort(strings.starts, kind="stable")
    starts = strings.starts[order]
    rows = np.searchsorted(starts, positions, side="right") - 1
    inside = (rows >= 0) & (positions < (starts + strings.lengths[order])[np.maximum(rows, 0)])
    found = order[rows[inside]]
    return int(found.min()) if len(found) else None


def _strip_leading_dots(strings: ByteStrings) -> None:
    """Drop leading ``./`` parts (the common alias: ``find .``), vectorised, in place."""
    buf = strings.buf
    while True:
        # "./x" only: "./" alone and ".//x" are left to the row-by-row rewrite
        lead = (strings.lengths > 2) & (buf[strings.starts] == _DOT)
        lead &= buf[np.minimum(strings.starts + 1, len(buf) - 1)] == _SLASH
        lead &= buf[np.minimum(strings.starts + 2, len(buf) - 1)] != _SLASH
        if not lead.any():
            return
        strings.starts[lead] += 2
        strings.lengths[lead] -= 2


def _candidates(strings: ByteStrings) -> np.ndarray:
    """Rows that may hold an alias part or end in '/' (a superset; checked row by row)."""
    ends = strings.starts + strings.lengths
    last = strings.buf[np.maximum(ends - 1, 0)]
    rows = set(np.flatnonzero((strings.lengths > 0) & (last == _SLASH)).tolist())
    rows.update(np.flatnonzero((strings.lengths == 1) & (last == _DOT)).tolist())
    matches = [
        m.start()
        for pattern in (b"//", b"/.")  # "/." also finds "/./" and a final "/."
        for m in re.finditer(re.escape(pattern), memoryview(strings.buf))
    ]
    if matches:
        order = np.argsort(strings.starts, kind="stable")
        starts = strings.starts[order]
        for position in matches:
            row = int(np.searchsorted(starts, position, side="right")) - 1
            if row >= 0 and position + 2 <= starts[row] + strings.lengths[order[row]]:
                rows.add(int(order[row]))
    return np.array(sorted(rows), dtype=np.int64)


def normalise_paths(strings: ByteStrings, where: Callable[[int, str], str]) -> int:
    """Rewrite aliases in place; return how many paths changed.

    ``where(row, path) -> str`` locates a row for error messages (file and line).
    """
    nul = first_row_with_byte(strings, 0)
    if nul is not None:
        start, length = int(strings.starts[nul]), int(strings.lengths[nul])
        raw = strings.buf[start : start + length].tobytes()
        text = raw.decode("utf-8", "replace")
        raise SubsetError(f"{where(nul, text)}: NUL byte in path: {raw!r}")
    before = strings.starts.copy()
    _strip_leading_dots(strings)
    changed = set(np.flatnonzero(strings.starts != before).tolist())
    for row in _candidates(strings).tolist():
        start, length = int(strings.starts[row]), int(strings.lengths[row])
        raw = strings.buf[start : start + length].tobytes()
        if raw.startswith(b"/"):
            continue  # absolute: refused by the row checks with its own message
        if raw == b"." or raw.endswith((b"/", b"/.")):
            path = raw.decode("utf-8", "replace")
            raise SubsetError(f"{where(row, path)}: path names a folder, not a file: {path!r}")
        parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
        clean = b"/".join(parts)
        if clean != raw:
            strings.buf[start : start + len(clean)] = np.frombuffer(clean, dtype=np.uint8)
            strings.lengths[row] = len(clean)
            changed.add(row)
    return len(changed)
