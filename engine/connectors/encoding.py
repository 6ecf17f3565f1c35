"""How sinks turn batches into message values: records as JSON, dead letters as envelopes."""

from __future__ import annotations

import orjson
import polars as pl
import pyarrow as pa

from engine.batch import (
    HEADERS,
    KEY,
    OFFSET,
    PARTITION,
    RAW,
    REASON,
    STAGE,
    VALUE,
    newline_terminated,
)
from engine.codec import encode_json, encode_json_lines

#: What sinks read besides a record's value: its key, headers and a dead letter's origin.
_CARRIED = (KEY, HEADERS, REASON, STAGE, PARTITION, OFFSET)


def is_dead_letter(frame: pl.DataFrame) -> bool:
    return REASON in frame.columns


def encode_values(frame: pl.DataFrame) -> pl.Series:
    """One JSON text per row: the record, or for a dead letter `{"reason", "raw"}`.

    A dead letter's reason names its stage and the field that was wrong; `raw` is the
    original value as UTF-8 text with undecodable bytes replaced. Dead letters are rare,
    so they are built row by row. A frame from `preencode` gives its values as they are.
    """
    if VALUE in frame.columns:
        return frame.get_column(VALUE)
    if not is_dead_letter(frame):
        return encode_json(frame)
    values = [
        orjson.dumps(
            {
                "reason": f"{stage}: {reason}",
                "raw": raw.decode("utf-8", "replace") if raw is not None else None,
            }
        ).decode()
        for reason, stage, raw in frame.select(REASON, STAGE, RAW).iter_rows()
    ]
    return pl.Series("value", values, pl.String)


def encode_lines(frame: pl.DataFrame) -> pa.Buffer:
    """The rows' values as an NDJSON body: each value followed by a newline."""
    if VALUE not in frame.columns and not is_dead_letter(frame):
        body = encode_json_lines(frame)  # the usual case: one native pass
        if body is not None:
            return body
    values = encode_values(frame).to_arrow().cast(pa.large_binary())
    return pa.py_buffer(newline_terminated(values))


def preencode(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` as a message-based sink reads it: each row's value encoded once (`_value`),
    with the envelope columns a Kafka sink uses and none of the fields.

    A distributed runner encodes in its workers, in parallel, and ships only this to the
    process that writes the sink.
    """
    values = encode_values(frame).alias(VALUE)
    carried = [name for name in _CARRIED if name in frame.columns]
    return frame.select(carried).with_columns(values)
