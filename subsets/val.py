"""Read an ImageNet validation split: class folders, or flat files + LOC_val_solution.csv.

The flat form is the one ImageNet ships: ``val/ILSVRC2012_val_00000001.JPEG`` … and a
CSV with columns ``ImageId,PredictionString`` whose first token is the wnid
(``ILSVRC2012_val_00000001,n01751748 1 2 3 4 n01751748 5 6 7 8``). Each CSV row must
match exactly one image file (by name without suffix); images the CSV does not name
are skipped and counted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from scaling.errors import decode_text
from subsets.errors import SubsetError, no_file
from subsets.listing import Listing
from subsets.packed import byte_strings
from subsets.scan import check_root, scan_tree, top_level

logger = logging.getLogger(__name__)

VAL_CSV_NAME = "LOC_val_solution.csv"


def find_val_csv(val_dir: Path) -> Path | None:
    """The LOC_val_solution.csv beside or inside ``val_dir``, if there is one."""
    for candidate in (val_dir / VAL_CSV_NAME, val_dir.parent / VAL_CSV_NAME):
        if candidate.is_file():
            return candidate
    return None


def read_val_csv(csv_path: Path) -> tuple[list[str], list[str], list[int]]:
    """(image ids, wnids, line numbers) of a LOC_val_solution.csv-style file."""
    if not csv_path.is_file():
        raise no_file("val CSV", csv_path)
    ids: list[str] = []
    wnids: list[str] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    text = decode_text(
        csv_path.read_bytes(),
        lambda line, raw, _: SubsetError(f"{csv_path} line {line}: not valid UTF-8: {raw[:80]!r}"),
    )
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise SubsetError(f"{csv_path} line {line}: NUL byte")
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not {"ImageId", "PredictionString"} <= set(header):
            raise SubsetError(
                f"{csv_path} line 1: expected the header ImageId,PredictionString, got {header}"
            )
        id_col, pred_col = header.index("ImageId"), header.index("PredictionString")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise SubsetError(
                    f"{csv_path} line {line}: expected {len(header)} fields, got {len(row)}"
                )
            image_id, tokens = row[id_col].strip(), row[pred_col].split()
            if not image_id or not tokens:
                raise SubsetError(f"{csv_path} line {line}: empty ImageId or PredictionString")
            if image_id in seen:
                raise SubsetError(
                    f"{csv_path} line {line}: duplicate path: ImageId {image_id} "
                    f"is already on line {seen[image_id]}"
                )
            seen[image_id] = line
            ids.append(image_id)
            wnids.append(tokens[0])
            lines.append(line)
    if not ids:
        raise SubsetError(f"{csv_path}: no rows")
    return ids, wnids, lines


def _flat_val(val_dir: Path, files: list[str], csv_path: Path, prefix: str) -> Listing:
    ids, wnids, lines = read_val_csv(csv_path)
    by_stem: dict[str, str] = {}
    for name in files:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
            if stem in by_stem:
                raise SubsetError(
                    f"val {val_dir}: two images for ImageId {stem}: {by_stem[stem]}, {name}"
                )
            by_stem[stem] = name
    paths = []
    for image_id, line in zip(ids, lines, strict=True):
        name = by_stem.get(image_id)
        if name is None:
            raise SubsetError(
                f"{csv_path} line {line}: no image file for ImageId {image_id} in {val_dir}"
            )
        paths.append(prefix + name)
    skipped: dict[str, int] = {}
    unnamed = len(by_stem) - len(ids)
    if unnamed:
        skipped[f"images not named in {csv_path.name}"] = unnamed
        logger.warning("val %s: %d images are not named in %s", val_dir, unnamed, csv_path)
    images = set(by_stem.values())
    others = sum(1 for f in files if f not in images and f != csv_path.name)
    if others:
        skipped["non-image files"] = others
    index: dict[str, int] = {}
    codes = np.array([index.setdefault(w, len(index)) for w in wnids], dtype=np.int32)
    return Listing(
        paths=byte_strings(paths),
        codes=codes,
        wnids=list(index),
        origin=csv_path,
        kind="val-csv",
        skipped=skipped,
        lines=np.asarray(lines, dtype=np.int64),
    )


def scan_val(
    val_dir: str | Path, prefix: str = "", csv_path: str | Path | None = None, workers: int = 16
) -> Listing:
    """Read a val split: flat + CSV when a CSV is given or there are no class folders."""
    val_dir = check_root(Path(val_dir), "val")
    folders, files = top_level(val_dir)
    if csv_path is None and folders:
        return scan_tree(val_dir, prefix, workers, what="val")
    csv_path = Path(csv_path) if csv_path is not None else find_val_csv(val_dir)
    if csv_path is None:
        raise SubsetError(
            f"val {val_dir}: no class folders and no {VAL_CSV_NAME} beside it (pass --val-csv FILE)"
            if files
            else f"val {val_dir}: empty folder"
        )
    if not files:
        raise SubsetError(f"val {val_dir}: no image files for {csv_path}")
    return _flat_val(val_dir, files, csv_path, prefix)
