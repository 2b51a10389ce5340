"""A source's raw rows (:class:`Listing`) and the listing-file reader.

A listing file names a tree's images without scanning it, for trees too slow to scan
on network storage. Two forms, paths relative to the data root:

* one ``relative/path wnid`` per line, separated by one space (blank and
  whitespace-only lines ignored);
  parsed by :mod:`subsets.parse` (numpy, 14.2M lines in seconds);
* CSV whose header names the columns ``path`` and ``wnid`` (for paths with spaces);
  parsed by pyarrow.csv.

When the fast parse fails, a line-by-line pass finds the offending line to name it.
Paths are normalised (:mod:`subsets.pathnorm`: ``./a``, ``a//b`` become ``a``, ``a/b``)
so a listing selects exactly like a scan of the same tree; NUL bytes are refused.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from subsets.arrow import to_numpy
from subsets.errors import SubsetError, no_file
from subsets.packed import ByteStrings, byte_strings
from subsets.parse import Malformed, parse_listing
from subsets.pathnorm import normalise_paths

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_BLANK_LINES = re.compile(rb"(?m)^[ \t\r\f\v]+(\n|\Z)")


@dataclass(kw_only=True)
class Listing:
    """Image paths and their wnids as read from one source, before sorting/selection."""

    paths: ByteStrings | None
    """Image paths, relative to the data root, in source order; None once prepared."""
    codes: np.ndarray
    """int32 index into ``wnids`` of every path."""
    wnids: list[str]
    """The distinct wnids (any order)."""
    origin: Path
    """The folder scanned or the file read; named in error messages."""
    kind: str
    """'tree' (scanned folder), 'listing' (listing file) or 'val-csv'."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Entries left out, counted by reason (``'.txt files'``, ``'sub-folders'``, …)."""
    empty_classes: tuple[str, ...] = ()
    """Class folders that held no images (left out of the class list, with a warning)."""
    lines: np.ndarray | None = None
    """Line (1-based) in ``origin`` of every row, when known without a rescan."""
    data_rows: np.ndarray | None = None
    """Data row in ``origin`` of every row, once rows were dropped (non-images)."""

    def where(self, row: int, path: str | None = None) -> str:
        """Where row ``row`` (path ``path``) came from: file and line, or folder and path."""
        if self.lines is not None:
            return f"{self.origin} line {int(self.lines[row])}"
        if self.kind == "listing":
            data_row = int(self.data_rows[row]) if self.data_rows is not None else row
            return f"{self.origin} line {_line_of_row(self.origin, data_row)}"
        if path is None and self.paths is not None:
            path = self.paths[row]
        return f"{self.origin} ({path})"


def _is_csv_header(first_line: str) -> bool:
    columns = [c.strip().strip('"') for c in first_line.split(",")]
    return "path" in columns and "wnid" in columns


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().rstrip("\r\n")


def _data_lines(path: Path, skip_header: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of every non-blank data line: the rows a parse returns."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if (number == 1 and skip_header) or not line.strip():
                continue
            yield number, line


def _line_of_row(path: Path, row: int) -> int:
    skip_header = _is_csv_header(_first_line(path))
    for index, (number, _) in enumerate(_data_lines(path, skip_header)):
        if index == row:
            return number
    raise IndexError(f"{path} has no data row {row}")


def _bad_line(path: Path, is_csv: bool, detail: str) -> SubsetError:
    """Find the first line that does not parse (the slow way) and describe it."""
    header = _first_line(path).split(",") if is_csv else []
    for number, raw in _data_lines(path, skip_header=is_csv):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return SubsetError(f"{path} line {number}: not valid UTF-8: {raw[:80]!r}")
        if "\0" in line:
            return SubsetError(f"{path} line {number}: NUL byte: {raw[:80]!r}")
        fields = next(csv.reader([line])) if is_csv else line.split(" ")
        if len(fields) != (len(header) if is_csv else 2) or not all(fields):
            expected = (
                f"{len(header)} CSV fields ({','.join(header)})"
                if is_csv
                else (
                    "'<path> <wnid>' separated by one space (use the CSV form 'path,wnid' "
                    "for paths with spaces)"
                )
            )
            return SubsetError(f"{path} line {number}: expected {expected}, got {line[:200]!r}")
    return SubsetError(f"{path}: cannot parse listing: {detail}")


def _read_csv_form(path: Path) -> tuple[ByteStrings, np.ndarray, list[str]]:
    read = pacsv.ReadOptions(block_size=64 << 20)
    parse = pacsv.ParseOptions(delimiter=",", ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(
        column_types={"path": pa.string(), "wnid": pa.string()},
        include_columns=["path", "wnid"],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(path, read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        data = path.read_bytes()
        kept = _BLANK_LINES.sub(b"", data)  # whitespace-only lines count as blank
        if kept == data:
            raise _bad_line(path, True, str(err)) from None
        try:
            table = pacsv.read_csv(pa.BufferReader(kept), read, parse, convert)
        except (pa.ArrowInvalid, pa.ArrowKeyError) as err2:
            raise _bad_line(path, True, str(err2)) from None
    wnids = table.column("wnid").combine_chunks().dictionary_encode()
    if any("\0" in w for w in wnids.dictionary.to_pylist()):
        raise _bad_line(path, True, "NUL byte in a wnid")
    codes = to_numpy(wnids.indices).astype(np.int32)
    return byte_strings(table.column("path")), codes, wnids.dictionary.to_pylist()


def check_rows(listing: Listing) -> None:
    """Refuse empty, absolute and '..' paths and empty wnids, naming the first one."""
    paths = listing.paths
    checks = [
        (lambda: np.flatnonzero(paths.lengths == 0), "empty path"),
        (
            lambda: np.flatnonzero((paths.lengths > 0) & (paths.buf[paths.starts] == ord("/"))),
            "absolute path (must be relative to the data root)",
        ),
        (lambda: [r] if (r := paths.find_component(b"..")) is not None else [], "'..' in path"),
    ]
    for rows, what in checks:
        found = rows()
        if len(found):
            row = int(found[0])
            path = paths[row]
            raise SubsetError(f"{listing.where(row, path)}: {what}: {path!r}")
    if "" in listing.wnids:
        row = int(np.flatnonzero(listing.codes == listing.wnids.index(""))[0])
        raise SubsetError(f"{listing.where(row, paths[row])}: empty wnid for {paths[row]!r}")


def keep_images(listing: Listing) -> Listing:
    """Drop rows whose path has no image suffix; count them in ``skipped``."""
    kept = listing.paths.ends_with_any(tuple(s.encode() for s in IMAGE_SUFFIXES))
    n_skipped = int(len(kept) - kept.sum())
    if n_skipped:
        listing.paths = listing.paths.take(kept)
        listing.codes = listing.codes[kept]
        if listing.lines is not None:
            listing.lines = listing.lines[kept]
        listing.data_rows = np.flatnonzero(kept)
        listing.skipped["paths without an image suffix"] = n_skipped
    return listing


def read_listing(path: str | Path) -> Listing:
    """Read a listing file (``path wnid`` per line, or CSV with path,wnid columns)."""
    path = Path(path)
    if not path.is_file():
        raise no_file("listing", path)
    is_csv = _is_csv_header(_first_line(path))
    if is_csv:
        paths, codes, wnids = _read_csv_form(path)
    else:
        try:
            paths, codes, wnids = parse_listing(path)
        except Malformed:
            if path.stat().st_size == 0 or not any(_data_lines(path, False)):
                raise SubsetError(f"listing {path}: no entries") from None
            raise _bad_line(path, False, "malformed") from None
    if not len(paths):
        raise SubsetError(f"listing {path}: no entries")
    listing = Listing(paths=paths, codes=codes, wnids=wnids, origin=path, kind="listing")
    normalised = normalise_paths(listing.paths, listing.where)
    if normalised:
        logger.info("%s: %d paths normalised (./, //, /./ parts dropped)", path, normalised)
    check_rows(listing)
    total = len(paths)
    listing = keep_images(listing)
    if not len(listing.paths):
        raise SubsetError(f"listing {path}: none of its {total} paths is an image")
    logger.info("read %d paths from %s", len(listing.paths), path)
    return listing
