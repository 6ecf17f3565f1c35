"""How sinks turn batches into message values: records as JSON, dead letters as envelopes."""

from __future__ import annotations

import orjson
import polars as pl

from engine.batch import RAW, REASON, STAGE
from engine.codec import encode_json


def is_dead_letter(frame: pl.DataFrame) -> bool:
    return REASON in frame.columns


def encode_values(frame: pl.DataFrame) -> pl.Series:
    """One JSON text per row: the record, or for a dead letter `{"reason", "raw"}`.

    A dead letter's reason names its stage and the field that was wrong; `raw` is the
    original value as UTF-8 text with undecodable bytes replaced. Dead letters are rare,
    so they are built row by row.
    """
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
