"""Dead letters from steps after decode: rejected rows with their reason and stage.

Decode keeps each rejected value's original bytes; a later step (validate, route, window)
rejects a decoded row, whose bytes are re-encoded as JSON from its fields (kept `_extra`
fields included), so the dead letter still holds the whole record: nothing is lost.
"""

from __future__ import annotations

import polars as pl

from engine.batch import RAW, dead_letters
from engine.codec import encode_json


def reject(rows: pl.DataFrame, reason: pl.Expr | pl.Series | str, stage: str) -> pl.DataFrame:
    """Dead letters for `rows`: reason (a text, or one per row) and stage."""
    if RAW not in rows.columns:
        rows = rows.with_columns(encode_json(rows).cast(pl.Binary).alias(RAW))
    return dead_letters(rows, reason, stage)
