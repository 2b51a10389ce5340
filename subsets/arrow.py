"""Arrow ↔ numpy through the buffers, without pandas.

pyarrow's ``to_numpy``, ``pa.array`` and ``pa.scalar`` import pandas (to check for pandas
inputs); that costs ~0.4 s, a tenth of an IN-1K build. These helpers do not.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _dtype(arrow_type: pa.DataType) -> np.dtype:
    name = {"float": "float32", "double": "float64", "halffloat": "float16"}.get(
        str(arrow_type), str(arrow_type)
    )
    try:
        return np.dtype(name)
    except TypeError:
        raise ValueError(f"not a fixed-width numeric column: {arrow_type}") from None


def _one(array: pa.Array) -> np.ndarray:
    if array.null_count:
        raise ValueError("column has nulls")
    if pa.types.is_boolean(array.type):
        bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[
            array.offset : array.offset + len(array)
        ].astype(bool)
    dtype = _dtype(array.type)
    values = np.frombuffer(array.buffers()[1], dtype=dtype)
    return values[array.offset : array.offset + len(array)]


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-width or boolean column without nulls as a numpy array (a copy if chunked)."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [_one(c) for c in column.chunks]
        if not chunks:
            return np.empty(0, dtype=_dtype(column.type))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return _one(column)


def from_numpy(values: np.ndarray) -> pa.Array:
    """A fixed-width or boolean numpy array as an Arrow array (zero-copy but booleans)."""
    values = np.ascontiguousarray(values)
    if values.dtype == bool:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow_type = getattr(pa, values.dtype.name)()  # pa.int32(), pa.uint64(), pa.float64(), …
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def string_array(values: list[str]) -> pa.StringArray:
    """Python strings as an Arrow string array."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = b"".join(encoded)
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(data))


def repeated_string(value: str, count: int) -> pa.StringArray:
    """``value`` ``count`` times, as an Arrow string array."""
    raw = value.encode("utf-8")
    offsets = np.arange(count + 1, dtype=np.int64) * len(raw)
    if offsets[-1] >= 2**31:
        raise ValueError("string column over 2 GiB")
    return pa.StringArray.from_buffers(
        count, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(raw * count)
    )
