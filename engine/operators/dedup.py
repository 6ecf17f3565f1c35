"""Dedup: the idempotent receiver, dropping repeats of an event within an event-time horizon."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa

from engine import _native
from engine.batch import PARTITION, binary_columns, numpy_column
from engine.operators.base import MAIN, Outputs, Step, column, require_fields

_TS = "__ts"
_KIND = "kind"


class DedupState:
    """Per partition: the largest event time seen, and each id's last emission time.

    Held by a native index (`engine/native/ids.c`): a hash table over the emissions in
    emission order, ids compared byte for byte, so two ids are never confused. Entries older
    than their partition's largest event time minus the horizon can never cause a drop again
    (the largest time only grows) and are dropped whenever the index has doubled since it
    last did: memory is bounded by about twice the ids emitted within one horizon.

    A key is the id's text; with several `on` fields, the JSON object of their texts.
    Snapshots hold the ids themselves, so they restore under any version.
    """

    def __init__(self, on: tuple[str, ...], horizon_ms: int) -> None:
        self.on = on
        self.horizon_ms = horizon_ms
        self.index = _native.IdIndex(horizon_ms)

    def keep(self, rows: pl.DataFrame) -> np.ndarray:
        """Apply the rule to `rows` (partition, `on` fields as text, event time) in order:
        which are kept. Kept rows with an id become the emissions later repeats meet."""
        offsets, data, _ = binary_columns(_keys(rows, self.on))
        identified = None
        if any(rows[name].null_count() for name in self.on):
            # an event with a null id cannot be identified: it passes, and is not remembered
            missing = rows.select(pl.any_horizontal(pl.col(self.on).is_null())).to_series()
            identified = (~missing).to_numpy().view(np.uint8)
        kept = self.index.process(
            numpy_column(rows[PARTITION], np.int32),
            numpy_column(rows[_TS], np.int64),
            (offsets, data, identified),
        )
        return np.frombuffer(kept, np.bool_)

    # ---- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> pl.DataFrame:
        """Emitted ids still within the horizon with their time, in emission order, plus one
        row per partition holding its largest event time (its id columns null)."""
        partitions, times, offsets, data = self.index.entries()
        count = len(partitions) // 4
        keys = pa.Array.from_buffers(
            pa.large_string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        emitted = pl.DataFrame(
            {
                PARTITION: np.frombuffer(partitions, np.int32),
                **self._fields(pl.Series(_KEY, keys)),
                _TS: np.frombuffer(times, np.int64),
            }
        )
        largest = self.index.largest()
        maxima = pl.DataFrame(
            {
                PARTITION: [partition for partition, _ in largest],
                _TS: [time for _, time in largest],
            },
            schema={PARTITION: pl.Int32, _TS: pl.Int64},
        )
        # `kind` tells the rows apart: an emitted id may itself be null
        return pl.concat(
            [
                emitted.with_columns(pl.lit("emitted").alias(_KIND)),
                maxima.with_columns(pl.lit("max").alias(_KIND)),
            ],
            how="diagonal_relaxed",
        )

    def _fields(self, keys: pl.Series) -> dict[str, pl.Series]:
        """The `on` columns of keys made by `_keys`."""
        if len(self.on) == 1:
            return {self.on[0]: keys.alias(self.on[0])}
        dtype = pl.Struct(dict.fromkeys(self.on, pl.String))
        return keys.str.json_decode(dtype).struct.unnest().to_dict()

    def restore(self, table: pl.DataFrame) -> None:
        if _KIND in table.columns:
            is_max = table[_KIND] == "max"
            table = table.drop(_KIND)
        else:  # a snapshot from before `kind`
            ids_null = pl.all_horizontal(pl.col(name).is_null() for name in self.on)
            is_max = table.select(ids_null).to_series()
        index = _native.IdIndex(self.horizon_ms)
        for partition, largest in table.filter(is_max).select(PARTITION, _TS).iter_rows():
            index.set_largest(partition, largest)
        emitted = table.filter(~is_max).select(
            pl.col(PARTITION).cast(pl.Int32),
            *[pl.col(name).cast(pl.String) for name in self.on],
            pl.col(_TS).cast(pl.Int64),
        )
        index.remember(
            numpy_column(emitted[PARTITION], np.int32),
            numpy_column(emitted[_TS], np.int64),
            binary_columns(_keys(emitted, self.on)),
        )
        self.index = index


_KEY = "__key"


def _keys(rows: pl.DataFrame, on: tuple[str, ...]) -> pl.Series:
    """Each row's key: the id's text, or with several fields the JSON object of theirs."""
    key = pl.col(on[0]) if len(on) == 1 else pl.struct(*on).struct.json_encode()
    return rows.select(key.alias(_KEY)).to_series()


class Dedup(Step, tag="dedup"):
    """Drop an event whose id was already emitted on its partition within the horizon.

    An event whose `on` fields are null cannot be identified: it always passes.

    Exactly: an event is dropped when an event with the same `on` values was already
    emitted on its partition and that event's time is ≥ (the largest event time seen by
    this step on that partition, this event included) − `horizon_ms`. An emitted event
    becomes the one later repeats are compared with. This is W1's rule, and makes
    redeliveries of at-least-once sources idempotent.

    Cost: one hash-table lookup per event, in native code, in an index of the ids emitted
    within the horizon (memory bounded by about twice them). Order of kept rows is
    preserved.

    Args:
        on: the fields identifying an event (their text values are compared).
        event_time: an integer field of event time in milliseconds.
        horizon_ms: how far back in event time a repeat is recognised.

    >>> import polars as pl
    >>> step = Dedup(on=("id",), event_time="ts", horizon_ms=1000)
    >>> batch = pl.DataFrame({"_partition": [0, 0, 0], "id": ["a", "a", "b"], "ts": [0, 0, 5]})
    >>> step.process(batch, step.new_state())["main"]["id"].to_list()
    ['a', 'b']
    """

    on: tuple[str, ...]
    event_time: str
    horizon_ms: Annotated[int, msgspec.Meta(ge=0)]

    stateful = True

    def __post_init__(self) -> None:
        if not self.on:
            raise ValueError("expected at least one field to deduplicate on")

    def keyed_by(self) -> tuple[str, ...]:
        return self.on

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (*self.on, self.event_time), fields)

    def new_state(self) -> DedupState:
        return DedupState(self.on, self.horizon_ms)

    def process(self, batch: pl.DataFrame, state: DedupState) -> Outputs:
        if batch.is_empty():
            return {MAIN: batch}
        rows = batch.select(
            pl.col(PARTITION).cast(pl.Int32),
            *[column(name).cast(pl.String).alias(name) for name in self.on],
            column(self.event_time).cast(pl.Int64).alias(_TS),
        )
        keep = state.keep(rows)
        return {MAIN: batch if keep.all() else batch.filter(pl.Series(keep))}
