"""A source's raw rows (:class:`Listing`) and the listing-file reader.

A listing file names a tree's images without scanning it, for trees too slow to scan
on network storage. Two forms, paths relative to the data root:

* one ``relative/path wnid`` per line, separated by one space (blank lines ignored);
* CSV whose header names the columns ``path`` and ``wnid`` (use it for paths with spaces).

Parsing is vectorised (pyarrow.csv, multi-threaded): 14.2M lines take seconds. When it
fails, a slow line-by-line pass finds the offending line to name it in the error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from subsets.errors import SubsetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_REGEX = r"\.(jpe?g|png|webp)$"  # the same set, for pyarrow (ignore_case)
_BLOCK_SIZE = 64 << 20


@dataclass(kw_only=True)
class Listing:
    """Image paths and their wnids as read from one source, before sorting/selection."""

    paths: pa.Array | pa.ChunkedArray
    """Image paths (string), relative to the data root."""
    wnids: pa.Array | pa.ChunkedArray
    """Class of each path (string or dictionary-encoded string)."""
    origin: Path
    """The folder scanned or the file read; named in error messages."""
    kind: str
    """'tree' (scanned folder), 'listing' (listing file) or 'val-csv'."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Entries left out, counted by reason (``'.txt files'``, ``'directories'``, …)."""
    empty_classes: tuple[str, ...] = ()
    """Class folders that held no images (left out of the class list, with a warning)."""
    lines: np.ndarray | None = None
    """Line (1-based) in ``origin`` of every row, when known without a rescan."""

    def where(self, row: int) -> str:
        """Where row ``row`` came from, for error messages (file and line, or path)."""
        if self.lines is not None:
            return f"{self.origin} line {int(self.lines[row])}"
        if self.kind == "listing":
            return f"{self.origin} line {_line_of_row(self.origin, row)}"
        return f"{self.origin} ({self.paths[row].as_py()})"


def _is_csv_header(first_line: str) -> bool:
    columns = [c.strip().strip('"') for c in first_line.split(",")]
    return "path" in columns and "wnid" in columns


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().rstrip("\r\n")


def _data_lines(path: Path, skip_header: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of every non-empty data line: the rows pyarrow returns."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if (number == 1 and skip_header) or not line:
                continue
            yield number, line


def _line_of_row(path: Path, row: int) -> int:
    skip_header = _is_csv_header(_first_line(path))
    for index, (number, _) in enumerate(_data_lines(path, skip_header)):
        if index == row:
            return number
    raise IndexError(f"{path} has no data row {row}")


def _bad_line(path: Path, is_csv: bool, arrow_message: str) -> SubsetError:
    """Find the first line that does not parse (the slow way) and describe it."""
    header = _first_line(path).split(",") if is_csv else []
    for number, raw in _data_lines(path, skip_header=is_csv):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return SubsetError(f"{path} line {number}: not valid UTF-8: {raw[:80]!r}")
        if is_csv:
            fields = next(csv.reader([line]))
            if len(fields) != len(header):
                return SubsetError(
                    f"{path} line {number}: expected {len(header)} CSV fields "
                    f"({','.join(header)}), got {len(fields)}: {line[:200]!r}"
                )
        elif len(line.split(" ")) != 2:
            return SubsetError(
                f"{path} line {number}: expected '<path> <wnid>' separated by one space, "
                f"got {line[:200]!r} (for paths with spaces use the CSV form 'path,wnid')"
            )
    return SubsetError(f"{path}: cannot parse listing: {arrow_message}")


def _parse(path: Path, is_csv: bool) -> pa.Table:
    read = pacsv.ReadOptions(
        block_size=_BLOCK_SIZE,
        column_names=None if is_csv else ["path", "wnid"],
    )
    parse = pacsv.ParseOptions(
        delimiter="," if is_csv else " ",
        quote_char='"' if is_csv else False,
        double_quote=is_csv,
        escape_char=False,
        ignore_empty_lines=True,
    )
    convert = pacsv.ConvertOptions(
        column_types={"path": pa.string(), "wnid": pa.string()},
        include_columns=["path", "wnid"],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        return pacsv.read_csv(path, read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise _bad_line(path, is_csv, str(err)) from None


def _check_fields(listing: Listing) -> None:
    """Empty fields, absolute paths and '..' would all break 'relative to the data root'."""
    checks = [
        (pc.equal(pc.binary_length(listing.paths), 0), "empty path"),
        (pc.equal(pc.binary_length(listing.wnids), 0), "empty wnid"),
        (pc.starts_with(listing.paths, "/"), "absolute path (must be relative to the data root)"),
        (pc.match_substring_regex(listing.paths, r"(^|/)\.\.(/|$)"), "path with '..'"),
    ]
    for bad, what in checks:
        if pc.any(bad).as_py():
            row = int(pc.index(bad, True).as_py())
            raise SubsetError(f"{listing.where(row)}: {what}: {listing.paths[row].as_py()!r}")


def keep_images(listing: Listing) -> Listing:
    """Drop rows whose path has no image suffix; count them in ``skipped``."""
    is_image = pc.match_substring_regex(listing.paths, IMAGE_REGEX, ignore_case=True)
    n_skipped = len(listing.paths) - pc.sum(is_image).as_py() if len(listing.paths) else 0
    if not n_skipped:
        return listing
    listing.paths = pc.filter(listing.paths, is_image)
    listing.wnids = pc.filter(listing.wnids, is_image)
    if listing.lines is not None:
        listing.lines = listing.lines[np.asarray(is_image)]
    listing.skipped["paths without an image suffix"] = int(n_skipped)
    return listing


def read_listing(path: str | Path) -> Listing:
    """Read a listing file (``path wnid`` per line, or CSV with path,wnid columns)."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"listing {path}: no such file")
    is_csv = _is_csv_header(_first_line(path))
    table = _parse(path, is_csv)
    if table.num_rows == 0:
        raise SubsetError(f"listing {path}: no entries")
    listing = Listing(
        paths=table.column("path"), wnids=table.column("wnid"), origin=path, kind="listing"
    )
    _check_fields(listing)
    listing = keep_images(listing)
    if not len(listing.paths):
        raise SubsetError(f"listing {path}: none of its {table.num_rows} paths is an image")
    logger.info("read %d paths from %s", len(listing.paths), path)
    return listing
