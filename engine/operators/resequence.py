"""Resequence: release each key's rows in sequence order, giving up a gap after a timeout.

The rule is stated one row at a time (the reference in
`tests/property/test_resequence_property.py` follows it literally), yet a batch is processed
with whole-column polars operations and no loop over rows or keys. Three facts make that
possible, for one key whose next expected sequence is `n0` at the start of the batch:

1. A row's *expiry* is the first input row that lifts its partition's max event time to its
   `event_time + gap_timeout_ms`: a forward as-of join of each row's threshold against the
   running max event time per partition.
2. Once a row `s` seen for the first time has expired, no sequence up to `s` can be released
   any more (it was released, or its gap given up), so the key's *floor* after input row `i`
   is `max(n0, s + 1 over such rows expired by i)`: a running max, read back with a backward
   as-of join. A row seen for the first time is late exactly when its sequence is below the
   floor just before it arrived, because every sequence between the floor and the next
   expected one has been received.
3. The next expected sequence after the batch is the first sequence missing at or above the
   final floor, so a row is released when it is below the floor or in the contiguous run that
   starts at the floor; that run is where `sequence - rank == floor`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
import polars as pl

from engine.batch import PARTITION
from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step, column, require_fields
from engine.operators.deadletter import reject

# Snapshot columns besides the held rows' own; envelope-style names cannot clash with fields.
RECORD = "_record"  # "held", "key" or "partition": which kind of state a snapshot row is
NEXT = "_next"  # on "key" records: the next sequence the key will release
MAX_EVENT_TIME = "_max_event_time"  # on "partition" records: the max event time seen

# Working columns: added while a batch is processed, never in an output.
_ARRIVAL = "_resequence_arrival"  # position in the batch; -1 for rows held from before
_ROW = "_resequence_row"
_SEQ = "_resequence_seq"
_EVENT = "_resequence_event"
_PART = "_resequence_partition"
_MARK = "_resequence_mark"  # the partition's max event time after this row
_THRESHOLD = "_resequence_threshold"
_EXPIRY = "_resequence_expiry"
_KEY_ID = "_resequence_key_id"
_START = "_resequence_start"  # next expected sequence at the start of the batch
_CANDIDATE = "_resequence_candidate"
_SKIP_AT = "_resequence_skip_at"
_SKIP = "_resequence_skip"
_LOOKUP = "_resequence_lookup"
_FLOOR = "_resequence_floor"
_ABOVE = "_resequence_above"
_RELEASED = "_resequence_released"
_ADVANCE = "_resequence_advance"
_RELEASE_AT = "_resequence_release_at"
_REASON = "_resequence_reason"


class ResequenceState:
    """What `Resequence` remembers between batches; the runner owns, snapshots and restores it.

    - `held`: rows waiting for a missing sequence (None before the first batch);
    - `next_expected`: one row per key seen, its key fields and `_next` (never evicted: a
      key's position is what tells a late duplicate from a new row);
    - `max_event_time`: one row per partition, `_partition` and `_max_event_time`.
    """

    def __init__(self, key_by: tuple[str, ...]) -> None:
        self.key_by = key_by
        self.held: pl.DataFrame | None = None
        self.next_expected: pl.DataFrame | None = None
        self.max_event_time = pl.DataFrame(schema={PARTITION: pl.Int32, MAX_EVENT_TIME: pl.Int64})

    def snapshot(self) -> pl.DataFrame:
        """One table: held rows, key positions and partition max event times, told apart by
        `_record`; a new frame, so later batches never change it."""
        records = [self.max_event_time.with_columns(pl.lit("partition").alias(RECORD))]
        if self.next_expected is not None:
            records.append(self.next_expected.with_columns(pl.lit("key").alias(RECORD)))
        if self.held is not None:
            records.append(self.held.with_columns(pl.lit("held").alias(RECORD)))
        return pl.concat(records, how="diagonal_relaxed")

    def restore(self, table: pl.DataFrame) -> None:
        """Replace the state by the one `snapshot` returned."""
        record = pl.col(RECORD)
        self.max_event_time = table.filter(record == "partition").select(
            pl.col(PARTITION).cast(pl.Int32), pl.col(MAX_EVENT_TIME).cast(pl.Int64)
        )
        if not set(self.key_by) <= set(table.columns):  # snapshot taken before any batch
            self.held = self.next_expected = None
            return
        self.next_expected = table.filter(record == "key").select(*self.key_by, NEXT)
        self.held = table.filter(record == "held").drop(RECORD, NEXT, MAX_EVENT_TIME)


class Resequence(Step, frozen=True, tag="resequence"):
    """Release each key's rows strictly in sequence order, waiting a bounded time for gaps.

    Per key (`key_by`), a row whose `sequence` is the next expected one is released on the
    main output together with the contiguous run of held rows after it; a row ahead of it is
    held. A gap is given up in event time, deterministically: once the max `event_time` seen
    on a held row's partition (`_partition`; a batch without it is one partition) reaches the
    row's `event_time + gap_timeout_ms`, the key's held rows are released in order from the
    smallest held sequence through the contiguous run holding its highest expired sequence,
    and the next expected sequence becomes the last released plus one. A row seen before, or
    below the next expected sequence (a duplicate, or late after its gap was given up), goes
    to the dead letters with its key and sequence in the reason, as does a row whose
    sequence or event time is null. `finish` releases every held row in sequence order.

    Guarantees: per key, the main output's sequences strictly increase, and each row is
    released or dead-lettered exactly once. Outputs do not depend on where the input is cut
    into batches. Across keys, a row comes after the latest-arriving row of its key's run up
    to it, so rows already in order pass through in input order; no other order across keys
    is promised.

    Costs: a few sorts and two as-of joins per batch, O(n log n) in the batch plus the held
    rows. Memory: a held row stays only while its partition's max event time is below its
    `event_time + gap_timeout_ms`, so held rows are bounded by what arrives within one gap
    timeout of event time; plus one next-expected sequence per key ever seen (not evicted)
    and one max event time per partition.

    Args:
        key_by: fields whose values name a sequence; the step needs them on one partition.
        sequence: Int64 field numbering each key's rows.
        event_time: Int64 field, epoch milliseconds.
        gap_timeout_ms: how far event time moves past a held row before its gap is given up.
        start: the first expected sequence of every key; None takes the first one seen.

    Raises ConfigError from `check` when a field is not in the input.

    >>> step = Resequence(key_by=("device",), sequence="seq", event_time="ts",
    ...                   gap_timeout_ms=1000, start=1)
    >>> state = step.new_state()
    >>> batch = pl.DataFrame({"device": ["a", "a", "a", "a"], "seq": [2, 1, 4, 1],
    ...                       "ts": [10, 20, 30, 40]})
    >>> out = step.process(batch, state)
    >>> out["main"]["seq"].to_list()
    [1, 2]
    >>> out["dead_letter"]["_reason"].to_list()
    ['key device=a: sequence 1 is a duplicate or arrived after its gap was given up']
    >>> step.process(pl.DataFrame({"device": ["a"], "seq": [6], "ts": [1030]}), state)[
    ...     "main"]["seq"].to_list()  # the gap at 3 is given up: ts 1030 >= 30 + 1000
    [4]
    >>> step.finish(state)["main"]["seq"].to_list()
    [6]
    """

    key_by: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    sequence: str
    event_time: str
    gap_timeout_ms: Annotated[int, msgspec.Meta(gt=0)]
    start: int | None = None

    stateful: ClassVar[bool] = True

    def keyed_by(self) -> tuple[str, ...]:
        return self.key_by

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (*self.key_by, self.sequence, self.event_time), fields)

    def new_state(self) -> ResequenceState:
        return ResequenceState(self.key_by)

    def process(self, batch: pl.DataFrame, state: ResequenceState) -> Outputs:
        arrivals = batch.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ARRIVAL))
        complete = column(self.sequence).is_not_null() & column(self.event_time).is_not_null()
        held = state.held if state.held is not None else batch.clear()
        rows = pl.concat(
            [held.with_columns(pl.lit(-1, pl.Int64).alias(_ARRIVAL)), arrivals.filter(complete)],
            how="diagonal_relaxed",
        )
        columns = [*batch.columns, *[name for name in held.columns if name not in batch.columns]]
        partition = pl.col(PARTITION) if PARTITION in rows.columns else pl.lit(0)
        rows = rows.with_row_index(_ROW).with_columns(
            *[column(path).alias(_key(index)) for index, path in enumerate(self.key_by)],
            column(self.sequence).cast(pl.Int64).alias(_SEQ),
            column(self.event_time).cast(pl.Int64).alias(_EVENT),
            partition.cast(pl.Int32).alias(_PART),
        )
        rows, state.max_event_time = self._expire(rows, state.max_event_time)
        rows, keys = self._classify(rows, state.next_expected)

        # fact 3: released below the floor, or in the run starting at it (sequence - rank)
        accepted = (
            rows.filter(_CANDIDATE)
            .sort(_KEY_ID, _SEQ)
            .with_columns((pl.col(_SEQ) >= pl.col(_FLOOR)).alias(_ABOVE))
            .with_columns(
                (
                    ~pl.col(_ABOVE)
                    | (
                        pl.col(_SEQ) - pl.col(_ABOVE).cast(pl.Int64).cum_sum().over(_KEY_ID) + 1
                        == pl.col(_FLOOR)
                    )
                ).alias(_RELEASED)
            )
        )
        advance = accepted.group_by(_KEY_ID).agg(
            (pl.col(_RELEASED) & pl.col(_ABOVE)).sum().alias(_ADVANCE)
        )
        positions = keys.join(advance, on=_KEY_ID, how="left").select(
            *[pl.col(_key(index)).alias(path) for index, path in enumerate(self.key_by)],
            (pl.col(_FLOOR) + pl.col(_ADVANCE).fill_null(0)).cast(pl.Int64).alias(NEXT),
        )
        state.next_expected = _merge_positions(state.next_expected, positions, self.key_by)
        state.held = accepted.filter(~pl.col(_RELEASED)).select(columns)

        released = (
            accepted.filter(_RELEASED)
            .with_columns(pl.col(_ARRIVAL).cum_max().over(_KEY_ID).alias(_RELEASE_AT))
            .sort(_RELEASE_AT, _KEY_ID, _SEQ)
        )
        return {
            MAIN: released.select(columns),
            DEAD_LETTER: self._rejected(
                arrivals.filter(~complete), rows.filter(~pl.col(_CANDIDATE))
            ),
        }

    def finish(self, state: ResequenceState) -> Outputs:
        if state.held is None or state.held.is_empty():
            return {}
        released = state.held.sort(*map(column, self.key_by), column(self.sequence))
        positions = released.group_by(
            [column(path).alias(path) for path in self.key_by], maintain_order=True
        ).agg((column(self.sequence).cast(pl.Int64).max() + 1).alias(NEXT))
        state.next_expected = _merge_positions(state.next_expected, positions, self.key_by)
        state.held = state.held.clear()
        return {MAIN: released}

    def _expire(
        self, rows: pl.DataFrame, max_event_time: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Add each row's expiry (fact 1) and return the new max event time per partition."""
        marks = (
            rows.filter(pl.col(_ARRIVAL) >= 0)
            .select(_PART, _ARRIVAL, _EVENT)
            .join(
                max_event_time.rename({PARTITION: _PART}),
                on=_PART,
                how="left",
                maintain_order="left",
            )
            .with_columns(
                pl.max_horizontal(pl.col(_EVENT).cum_max().over(_PART), MAX_EVENT_TIME).alias(_MARK)
            )
        )
        first_at_mark = (
            marks.group_by(_PART, _MARK).agg(pl.col(_ARRIVAL).min().alias(_EXPIRY)).sort(_MARK)
        )
        rows = (
            rows.with_columns((pl.col(_EVENT) + self.gap_timeout_ms).alias(_THRESHOLD))
            .sort(_THRESHOLD)
            .join_asof(
                first_at_mark,
                left_on=_THRESHOLD,
                right_on=_MARK,
                by=_PART,
                strategy="forward",
                check_sortedness=False,
            )
            .sort(_ROW)
            .with_columns(
                pl.when(pl.col(_EXPIRY).is_not_null())
                .then(pl.max_horizontal(_ARRIVAL, _EXPIRY))
                .alias(_EXPIRY)
            )
        )
        latest = marks.group_by(_PART).agg(pl.col(_MARK).max())
        maxima = (
            pl.concat(
                [
                    max_event_time,
                    latest.select(
                        pl.col(_PART).alias(PARTITION), pl.col(_MARK).alias(MAX_EVENT_TIME)
                    ),
                ]
            )
            .group_by(PARTITION)
            .agg(pl.col(MAX_EVENT_TIME).max())
        )
        return rows, maxima

    def _classify(
        self, rows: pl.DataFrame, next_expected: pl.DataFrame | None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Mark the rows to keep (`_CANDIDATE`) and add each key's final floor (fact 2).

        Returns the rows and one row per key: its key id, key fields and final floor.
        """
        key_by = [_key(index) for index in range(len(self.key_by))]
        known = (
            next_expected.rename(dict(zip(self.key_by, key_by, strict=True))).with_columns(
                pl.col(name).cast(rows.schema[name]) for name in key_by
            )
            if next_expected is not None
            else rows.select(key_by).clear().with_columns(pl.lit(None, pl.Int64).alias(NEXT))
        )
        keys = (
            rows.select(key_by)
            .unique(maintain_order=True)
            .with_row_index(_KEY_ID)
            .join(known, on=key_by, how="left", nulls_equal=True, maintain_order="left")
        )
        rows = rows.join(
            keys.select(_KEY_ID, *key_by, NEXT), on=key_by, nulls_equal=True, maintain_order="left"
        ).with_columns(
            pl.coalesce(
                NEXT, pl.lit(self.start, pl.Int64), pl.col(_SEQ).first().over(_KEY_ID)
            ).alias(_START)
        )
        first_time = pl.struct(_KEY_ID, _SEQ).is_first_distinct()
        rows = rows.with_columns((first_time & (pl.col(_SEQ) >= pl.col(_START))).alias(_CANDIDATE))
        skips = (
            rows.filter(pl.col(_CANDIDATE) & pl.col(_EXPIRY).is_not_null())
            .group_by(_KEY_ID, pl.col(_EXPIRY).alias(_SKIP_AT))
            .agg((pl.col(_SEQ).max() + 1).alias(_SKIP))
            .sort(_SKIP_AT)
            .with_columns(pl.col(_SKIP).cum_max().over(_KEY_ID))
        )
        rows = (
            rows.with_columns((pl.col(_ARRIVAL) - 1).alias(_LOOKUP))
            .sort(_LOOKUP)
            .join_asof(
                skips,
                left_on=_LOOKUP,
                right_on=_SKIP_AT,
                by=_KEY_ID,
                strategy="backward",
                check_sortedness=False,
            )
            .sort(_ROW)
            .with_columns(
                (pl.col(_CANDIDATE) & ~(pl.col(_SEQ) < pl.col(_SKIP)).fill_null(False)).alias(
                    _CANDIDATE
                )
            )
        )
        floors = (
            rows.group_by(_KEY_ID)
            .agg(*[pl.col(name).first() for name in key_by], pl.col(_START).first())
            .join(skips.group_by(_KEY_ID).agg(pl.col(_SKIP).max()), on=_KEY_ID, how="left")
            .with_columns(pl.max_horizontal(_START, _SKIP).alias(_FLOOR))
            .select(_KEY_ID, *key_by, _FLOOR)
        )
        rows = rows.join(floors.select(_KEY_ID, _FLOOR), on=_KEY_ID, maintain_order="left")
        return rows, floors

    def _rejected(self, incomplete: pl.DataFrame, late: pl.DataFrame) -> pl.DataFrame:
        """Dead letters in input order: null sequence or event time, duplicate or late rows."""
        key_text = pl.concat_str(
            [
                pl.concat_str(
                    pl.lit(f"{path}="), pl.col(_key(index)).cast(pl.String).fill_null("null")
                )
                for index, path in enumerate(self.key_by)
            ],
            separator=", ",
        )
        null_field = (
            pl.when(column(self.sequence).is_null())
            .then(pl.lit(self.sequence))
            .otherwise(pl.lit(self.event_time))
        )
        rejected = pl.concat(
            [
                incomplete.with_columns(pl.format("field {} is null", null_field).alias(_REASON)),
                late.with_columns(
                    pl.format(
                        "key {}: sequence {} is a duplicate or arrived after its gap was given up",
                        key_text,
                        pl.col(_SEQ),
                    ).alias(_REASON)
                ),
            ],
            how="diagonal_relaxed",
        ).sort(_ARRIVAL)
        return reject(rejected, pl.col(_REASON), self.name or self.op)


def _key(index: int) -> str:
    """The working column holding the key's `index`-th field (fields may be dotted paths)."""
    return f"_resequence_key{index}"


def _merge_positions(
    known: pl.DataFrame | None, updated: pl.DataFrame, key_by: tuple[str, ...]
) -> pl.DataFrame:
    """Key positions: `updated` for its keys, `known` for the others."""
    if known is None:
        return updated
    kept = known.join(updated, on=list(key_by), how="anti", nulls_equal=True)
    return pl.concat([kept, updated], how="vertical_relaxed")
