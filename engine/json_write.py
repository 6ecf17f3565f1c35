"""A frame's rows written as JSON objects by the native writer, one pass per batch.

`engine/native/write.c` walks the frame's Arrow buffers and writes each row's non-null
fields; this module hands it those buffers. Columns of a type it does not write itself
(date-times, decimals, 32-bit floats, ...) are first turned into JSON text by polars'
`json_encode`, which the writer then copies as it is.
"""

from __future__ import annotations

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from engine import _native
from engine.json_scan import arrow_buffer

# The writer's column kinds (the enum at the top of engine/native/write.c).
_STR, _INT, _FLOAT, _BOOL, _STRUCT, _LIST, _RAW, _NULL, _VIEW = range(9)
# what the writer writes itself; every integer type but UInt64 fits its int64
_NATIVE = (pl.String, pl.Float64, pl.Boolean, pl.Null, pl.Int8, pl.Int16, pl.Int32, pl.Int64)
_NATIVE += (pl.UInt8, pl.UInt16, pl.UInt32)
_ONE_BYTE = pa.py_buffer(b"\0")  # stands in for the data of arrays that hold no bytes
_NO_ROWS = pl.Series("value", [], pl.String)


def write_json(frame: pl.DataFrame, columns: list[str]) -> tuple[pl.Series, pl.Series | None]:
    """Each row of `frame` as one JSON object of its non-null `columns` (a String Series),
    and where a raw-text column's JSON may hold a nested null (None: no such column).

    Raw-text columns (see the module docstring) are written as polars wrote them, nested
    nulls included: the caller removes those from the rows it is told of.
    """
    if frame.height == 0:
        return _NO_ROWS, None
    if not columns:
        return pl.Series("value", ["{}"] * frame.height, pl.String), None
    frame = frame[columns]  # [] runs no query: cheaper than select here
    raw = [name for name, dtype in frame.schema.items() if not _writes_natively(dtype)]
    text_nulls = None
    if raw:
        frame = frame.with_columns(_as_json_text(name) for name in raw)
        text_nulls = frame.select(
            pl.any_horizontal(pl.col(raw).str.contains(":null", literal=True)).fill_null(False)
        ).to_series()
    offsets, data = _write(frame, raw, b"")
    values = pa.Array.from_buffers(
        pa.large_string(), frame.height, [None, arrow_buffer(offsets), arrow_buffer(data)]
    )
    return pl.Series("value", values), text_nulls


def write_json_lines(frame: pl.DataFrame, columns: list[str]) -> pa.Buffer | None:
    """The rows as `write_json` writes them, each followed by a newline: an NDJSON body,
    written straight into one buffer. None when a column is not written natively (its
    nested nulls need `write_json`'s fix-up)."""
    if not columns:
        return pa.py_buffer(b"{}\n" * frame.height)
    frame = frame[columns]
    if not all(_writes_natively(dtype) for dtype in frame.schema.values()):
        return None
    if frame.height == 0:
        return pa.py_buffer(b"")
    _, data = _write(frame, [], b"\n")
    return arrow_buffer(data)


def _write(
    frame: pl.DataFrame, raw: list[str], terminator: bytes
) -> tuple[tuple[int, int, object], tuple[int, int, object]]:
    """The native writer's (offsets, data) for `frame`'s rows; `raw` columns hold JSON text."""
    # polars' own string views, not a copy of them as large_string
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest()).combine_chunks()
    keep: list[object] = []  # what the plan points into must outlive the call
    plan: list[tuple[int, bytes, int, int, int, int, int]] = [(_STRUCT, b"", -1, 0, 0, 0, 0)]
    for name, column in zip(table.column_names, table.columns, strict=True):
        array = column.chunk(0) if column.num_chunks else pa.array([], column.type)
        _add(plan, keep, array, _key(name), 0, _RAW if name in raw else None)
    return _native.write(plan, frame.height, terminator)


def _writes_natively(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Struct):
        return all(_writes_natively(field.dtype) for field in dtype.fields)
    if isinstance(dtype, pl.List):
        return _writes_natively(dtype.inner)
    return isinstance(dtype, _NATIVE)


def _as_json_text(name: str) -> pl.Expr:
    """The column's values as polars writes them in JSON (null stays null)."""
    column = pl.col(name)
    text = pl.struct(column.alias("v")).struct.json_encode()
    return (
        pl.when(column.is_not_null())
        .then(text.str.strip_prefix('{"v":').str.strip_suffix("}"))
        .alias(name)
    )


def _key(name: str) -> bytes:
    """A member's name as the writer writes it: quoted, escaped, with its colon."""
    return orjson.dumps(name) + b":"


def _add(
    plan: list[tuple[int, bytes, int, int, int, int, int]],
    keep: list[object],
    array: pa.Array,
    key: bytes,
    parent: int,
    kind: int | None = None,
) -> None:
    """Append `array` (and, for nested types, its children) to the writer's plan."""
    kind = _kind(array.type) if kind is None else kind
    if kind == _RAW and not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    elif kind == _INT and array.type != pa.int64():
        array = array.cast(pa.int64())
    elif kind == _LIST and not pa.types.is_large_list(array.type):
        array = array.cast(pa.large_list(array.type.value_field))
    keep.append(array)
    buffers = array.buffers()
    validity = buffers[0].address if buffers[0] is not None else 0
    offsets = values = 0
    if kind in (_STR, _RAW):
        offsets, values = buffers[1].address, (buffers[2] or _ONE_BYTE).address
    elif kind == _VIEW:
        data = np.array([buffer.address for buffer in buffers[2:]] or [0], np.uint64)
        keep.append(data)
        offsets, values = data.ctypes.data, buffers[1].address
    elif kind == _LIST:
        offsets = buffers[1].address
    elif kind in (_INT, _FLOAT, _BOOL):
        values = (buffers[1] or _ONE_BYTE).address
    index = len(plan)
    plan.append((kind, key, parent, validity, offsets, values, array.offset))
    if kind == _STRUCT:
        for position, field in enumerate(array.type):
            _add(plan, keep, array.field(position), _key(field.name), index)
    elif kind == _LIST:
        _add(plan, keep, array.values, b"", index)


def _kind(arrow_type: pa.DataType) -> int:
    if pa.types.is_large_string(arrow_type):
        return _STR
    if pa.types.is_string_view(arrow_type):
        return _VIEW
    if pa.types.is_integer(arrow_type):
        return _INT
    if pa.types.is_float64(arrow_type):
        return _FLOAT
    if pa.types.is_boolean(arrow_type):
        return _BOOL
    if pa.types.is_struct(arrow_type):
        return _STRUCT
    if pa.types.is_large_list(arrow_type) or pa.types.is_list(arrow_type):
        return _LIST
    if pa.types.is_null(arrow_type):
        return _NULL
    raise TypeError(f"the JSON writer has no kind for {arrow_type}")
