"""Batches and their envelope columns.

A batch is a `polars.DataFrame` (Arrow memory). Besides a message's own fields it carries the
envelope as columns whose names start with an underscore, so that no user field can collide
with them and encoders can leave them out:

- `_raw` (Binary): the message value as received; present until the batch is decoded.
- `_key` (Binary, nullable): the message key.
- `_partition` (Int32): the partition the message came from, or was assigned to.
- `_offset` (Int64): the message's position in its partition (or line number in a file).
- `_timestamp` (Int64, nullable): broker timestamp in epoch milliseconds.
- `_headers` (List of Struct{key: String, value: Binary}, nullable): message headers.
- `_extra` (String, nullable): JSON object of the fields the schema does not declare,
  carried through unchanged and merged back when the record is encoded.
- `_reason`, `_stage` (String): on dead-letter batches, why and where a record failed.
- `_value` (String): a record already encoded as its message value (JSON text), so that a
  sink in another process only writes it (`engine.connectors.encoding.preencode`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

RAW = "_raw"
KEY = "_key"
PARTITION = "_partition"
OFFSET = "_offset"
TIMESTAMP = "_timestamp"
HEADERS = "_headers"
EXTRA = "_extra"
REASON = "_reason"
STAGE = "_stage"
VALUE = "_value"

HEADER_DTYPE = pl.List(pl.Struct({"key": pl.String(), "value": pl.Binary()}))
#: `HEADER_DTYPE` as Arrow spells it, for sources that build batches in Arrow.
HEADER_ARROW_TYPE = (
    pl.DataFrame(schema={HEADERS: HEADER_DTYPE}).to_arrow().schema.field(HEADERS).type
)
ENVELOPE_SCHEMA = pl.Schema(
    {
        KEY: pl.Binary(),
        PARTITION: pl.Int32(),
        OFFSET: pl.Int64(),
        TIMESTAMP: pl.Int64(),
        HEADERS: HEADER_DTYPE,
    }
)
DEAD_LETTER_SCHEMA = pl.Schema(
    {REASON: pl.String(), STAGE: pl.String(), RAW: pl.Binary(), **ENVELOPE_SCHEMA}
)


def raw_batch(
    values: list[bytes],
    *,
    keys: list[bytes | None] | None = None,
    partitions: list[int] | None = None,
    offsets: list[int] | None = None,
    headers: list[list[tuple[str, bytes]] | None] | None = None,
) -> pl.DataFrame:
    """Build an undecoded batch from message values (tests and in-memory sources)."""
    count = len(values)
    return pl.DataFrame(
        {
            RAW: pl.Series(RAW, values, pl.Binary()),
            KEY: pl.Series(KEY, keys if keys is not None else [None] * count, pl.Binary()),
            PARTITION: pl.Series(
                PARTITION, partitions if partitions is not None else [0] * count, pl.Int32()
            ),
            OFFSET: pl.Series(OFFSET, offsets if offsets is not None else range(count), pl.Int64()),
            TIMESTAMP: pl.Series(TIMESTAMP, [None] * count, pl.Int64()),
            HEADERS: pl.Series(
                HEADERS,
                [
                    None if pairs is None else [{"key": k, "value": v} for k, v in pairs]
                    for pairs in (headers if headers is not None else [None] * count)
                ],
                HEADER_DTYPE,
            ),
        }
    )


def data_columns(frame: pl.DataFrame) -> list[str]:
    """The message's own fields: every column that is not part of the envelope."""
    return [name for name in frame.columns if not name.startswith("_")]


def dead_letters(
    rejected: pl.DataFrame, reason: pl.Expr | pl.Series | str, stage: str
) -> pl.DataFrame:
    """Shape rejected rows (which hold `_raw`) as dead letters; one reason or one per row."""
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    return rejected.select(
        reason_expr.cast(pl.String).alias(REASON),
        pl.lit(stage).alias(STAGE),
        *[
            pl.col(name) if name in rejected.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in DEAD_LETTER_SCHEMA.items()
            if name not in (REASON, STAGE)
        ],
    )


_NEWLINE = pa.scalar(b"\n", pa.large_binary())
_NOTHING = pa.scalar(b"", pa.large_binary())


def newline_terminated(values: pa.LargeBinaryArray) -> np.ndarray:
    """`values`, each followed by a newline, back to back in one buffer (a view, uint8):
    an NDJSON body, built in one Arrow pass without a Python string."""
    lines = pc.binary_join_element_wise(values, _NOTHING, _NEWLINE)
    offsets, data = value_buffers(lines)
    return data[offsets[0] : offsets[-1]]


def value_buffers(values: pa.LargeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
    """A LargeBinary array's value offsets (count + 1, int64) and data bytes (uint8), as
    numpy views without copying: value i is `data[offsets[i]:offsets[i + 1]]`, and all the
    values, back to back, are `data[offsets[0]:offsets[-1]]`."""
    count = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int64, count + 1, values.offset * 8)
    data = np.frombuffer(values.buffers()[2] or b"\0", np.uint8)
    return offsets, data


#: A string or binary column as native code takes it: int64 value offsets (rows + 1), the
#: data bytes, and one validity byte per row (None when no value is null).
Columns = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def binary_columns(series: pl.Series) -> Columns:
    """A String or Binary column as native code takes it: value offsets and data (as
    `value_buffers`), and one validity byte per row (None when no value is null)."""
    values = series.to_arrow()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    offsets, data = value_buffers(values.cast(pa.large_binary()))
    valid = series.is_not_null().to_numpy().view(np.uint8) if series.null_count() else None
    return offsets, data, valid


def binary_array(
    arrow_type: pa.DataType, offsets: pa.Buffer, data: pa.Buffer, valid: object
) -> pa.Array:
    """The inverse of `binary_columns`: a large (string or binary) Arrow array of native
    code's int64 `offsets`, `data` and one validity byte per value in `valid`."""
    flags = np.frombuffer(valid, np.bool_)
    validity = None if flags.all() else pa.py_buffer(np.packbits(flags, bitorder="little"))
    return pa.Array.from_buffers(arrow_type, len(flags), [validity, offsets, data])


def numpy_column(series: pl.Series, dtype: type[np.generic]) -> np.ndarray:
    """A column's values as one contiguous numpy array of `dtype`, for native code."""
    return np.ascontiguousarray(series.to_numpy(), dtype)
