"""Checks of manifest files read from disk: metadata fields, column types, values.

A manifest may be damaged (a flipped byte, a truncated copy) or edited by hand (a
column dropped, a null label, a path that is not UTF-8). These checks turn each such
file into a SubsetError that names it and what is wrong, so ``subsets verify`` can
report it as broken and go on, and a loader never sees a half-valid table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from subsets.errors import SubsetError

_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "split": str,
    "source_kind": str,
    "source_input": str,
    "source_digest": str,
    "seed": int,
    "fraction": (int, float),
    "holdout_per_class": int,
    "class_subset": (str, type(None)),
    "classes": list,
    "num_images": int,
    "format_version": int,
    "digest": str,
}


def check_fields(fields: Any) -> None:
    """Raise ValueError naming the first metadata field that is missing or mistyped."""
    if not isinstance(fields, dict):
        raise ValueError(f"expected a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    for name, kind in _FIELD_TYPES.items():
        if name not in fields:
            raise ValueError(f"field {name!r} is missing")
        value = fields[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"field {name!r} has the wrong type: {value!r}")
    if not all(isinstance(c, str) for c in fields["classes"]):
        raise ValueError("field 'classes' must be a list of strings")


def _type_ok(name: str, actual: pa.DataType, expected: pa.Schema) -> bool:
    if name == "wnid":  # hand-made manifests may hold plain strings
        actual = actual.value_type if pa.types.is_dictionary(actual) else actual
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if name == "path":
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return actual == expected.field(name).type


def check_schema(path: Path, schema: pa.Schema, expected: pa.Schema, columns: list[str]) -> None:
    """Refuse a file whose ``columns`` are missing from ``schema`` or of another type."""
    for name in columns:
        if name not in schema.names:
            raise SubsetError(
                f"{path}: column {name!r} is missing (a manifest has {', '.join(expected.names)})"
            )
        actual = schema.field(name).type
        if not _type_ok(name, actual, expected):
            raise SubsetError(
                f"{path}: column {name!r} is {actual}, expected {expected.field(name).type}"
            )


def _first_bad_utf8(column: pa.ChunkedArray) -> int:
    for row, value in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return row
    return -1


def check_columns(path: Path, table: pa.Table) -> None:
    """Refuse null values and strings that are not UTF-8 (SubsetError naming the row)."""
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            row = int(pc.index(column.is_null(), True).as_py())
            raise SubsetError(
                f"{path}: column {name!r} has {column.null_count} null values (first at row {row})"
            )
        if pa.types.is_dictionary(column.type):
            column = pa.chunked_array([c.dictionary for c in column.chunks], column.type.value_type)
            name = f"{name} (dictionary)"
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:
                for chunk in column.chunks:
                    chunk.validate(full=True)
            except pa.ArrowInvalid:
                row = _first_bad_utf8(column)
                raise SubsetError(f"{path}: column {name!r} row {row}: not valid UTF-8") from None
