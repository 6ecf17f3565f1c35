"""Event-time windows: tumbling, sliding and session aggregates per key, closed by watermark.

All three steps share one model, so that a bounded run and a stream give the same outputs and
splitting the input into batches at any point changes nothing:

- **Watermark per partition.** The watermark of a partition is the largest event time among
  the rows that reached the step on that partition (kept in state across batches), minus
  `allowed_lateness_ms`. Within a batch, row j's watermark counts the rows before it and
  itself, so the outcome is the one a row-at-a-time engine would give. Partitions never hold
  each other back or push each other forward.
- **Lateness.** A row is late when every window it belongs to is already closed under its own
  watermark. It goes, unchanged, to the `late` sink (or to `DEAD_LETTER` with the reason
  `"late event: window already closed"` when no sink is named) and is counted nowhere.
- **Closing.** After each batch, every window the partition's watermark has passed (for a
  session: passed far enough that no on-time row can reach it) is emitted on `MAIN` and
  dropped from state, so each window is emitted once. Windows still open at the end of the
  input are never emitted (`finish` returns nothing): flushing them would make a bounded run
  differ from the same input read as a stream.
- **Accumulators merge.** Each row becomes a one-row partial aggregate; partials and the
  open windows in state are merged by one polars `group_by` per batch (count and sum add,
  min/max combine, mean is kept as sum and count, first/last carry the arrival position of
  their row, count_distinct keeps the distinct values as a list). No Python loop over rows.
  Tumbling windows of counts and integer sums per string key (W1's) are kept instead by a
  native table (`engine.operators.tumbling_table`): same model, same outputs, a hash-table
  lookup per row instead of a ~4 ms group_by per batch.
- **Memory** is bounded by the open windows: one row per (partition, key, open window) with
  its accumulators (count_distinct also keeps its distinct values), plus one row per partition.
  A batch costs time linear in its rows (times windows per row, when sliding) plus the open
  windows, which are regrouped with it.

A row whose event time is null cannot be placed in any window; it goes to `DEAD_LETTER`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

import msgspec
import numpy as np
import polars as pl

from engine.batch import KEY, PARTITION
from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step, column, require_fields
from engine.operators.deadletter import reject
from engine.operators.tumbling_table import Layout, NativeWindows
from engine.operators.window_columns import (
    FIRST_KEY,
    FIRST_SEQUENCE,
    LAST_SEQUENCE,
    MAX_EVENT_TIME,
    ROWS_SEEN,
    WINDOW_END,
    WINDOW_START,
)

LATE_REASON = "late event: window already closed"

# Working columns; a leading "__" keeps them apart from message fields and the envelope.
_EVENT_TIME = "__event_time"
_WATERMARK = "__watermark"
_SEQUENCE = "__sequence"
_SESSION = "__session"
_ENTRY = "__entry"
_CLOSED = "__closed"

_FUNCTIONS = ("count", "sum", "min", "max", "mean", "first", "last", "count_distinct")
_EXPECTED = "count(), sum(f), min(f), max(f), mean(f), first(f), last(f) or count_distinct(f)"
_CALL = re.compile(r"\s*(\w+)\s*\(\s*([^()\s]*)\s*\)\s*")
_FIELD = re.compile(r"\w+(\.\w+)*")


@dataclass(frozen=True)
class Aggregate:
    """One output column `name = function(field)`, computed by accumulators that merge.

    `initial` turns one row into accumulators, `merged` combines accumulators of one window
    (from any number of rows and batches, in any order) and `result` reads the final value.
    Nulls are skipped: sum of no values is 0; min, max and mean of no values are null;
    count_distinct counts distinct non-null values; first/last are the values of the
    earliest/latest arriving row, null included.
    """

    name: str
    function: str
    field: str | None

    @classmethod
    def parse(cls, name: str, spec: str) -> Aggregate:
        """Parse `spec` (e.g. `"sum(amount)"`); ValueError naming the aggregate if invalid."""
        call = _CALL.fullmatch(spec)
        if call is None or call.group(1) not in _FUNCTIONS:
            raise ValueError(f"aggregate {name!r}: cannot parse {spec!r}; expected {_EXPECTED}")
        function, field = call.group(1), call.group(2)
        if function == "count" and field:
            raise ValueError(f"aggregate {name!r}: count() takes no field, got {spec!r}")
        if function != "count" and not _FIELD.fullmatch(field):
            raise ValueError(
                f"aggregate {name!r}: {function}(f) needs a field name (dotted for a nested "
                f"field), got {spec!r}"
            )
        return cls(name, function, field or None)

    def _part(self, part: str) -> str:
        return f"__{self.name}.{part}"

    def initial(self, value: pl.Expr, dtype: pl.DataType) -> list[pl.Expr]:
        """Accumulators of one row whose field value is `value` (of type `dtype`)."""
        if self.function == "count":
            return [pl.lit(1, pl.Int64).alias(self._part("count"))]
        if self.function == "sum" and (dtype.is_integer() or dtype == pl.Boolean):
            return [value.cast(pl.Int64).alias(self._part("sum"))]
        if self.function == "mean":
            return [
                value.cast(pl.Float64).alias(self._part("sum")),
                value.is_not_null().cast(pl.Int64).alias(self._part("count")),
            ]
        if self.function == "count_distinct":
            return [pl.concat_list(value).alias(self._part("values"))]
        return [value.alias(self._part(self.function))]

    def merged(self) -> list[pl.Expr]:
        """Aggregations (for `group_by().agg`) combining the accumulators of one window."""
        if self.function in ("count", "sum"):
            return [pl.col(self._part(self.function)).sum()]
        if self.function == "mean":
            return [pl.col(self._part("sum")).sum(), pl.col(self._part("count")).sum()]
        if self.function == "count_distinct":
            values = pl.col(self._part("values")).explode(keep_nulls=False).drop_nulls()
            return [values.unique().alias(self._part("values"))]
        accumulator = pl.col(self._part(self.function))
        if self.function == "first":
            return [accumulator.get(pl.col(FIRST_SEQUENCE).arg_min())]
        if self.function == "last":
            return [accumulator.get(pl.col(LAST_SEQUENCE).arg_max())]
        return [accumulator.min() if self.function == "min" else accumulator.max()]

    def result(self) -> pl.Expr:
        """The output column from merged accumulators."""
        if self.function == "mean":
            count = pl.col(self._part("count"))
            return pl.when(count > 0).then(pl.col(self._part("sum")) / count).alias(self.name)
        if self.function == "count_distinct":
            return pl.col(self._part("values")).list.len().cast(pl.Int64).alias(self.name)
        return pl.col(self._part(self.function)).alias(self.name)


@functools.cache
def _parse_aggregates(specs: tuple[tuple[str, str], ...]) -> tuple[Aggregate, ...]:
    return tuple(Aggregate.parse(name, spec) for name, spec in specs)


class WindowState:
    """A window step's state: its open windows and each partition's progress.

    `windows` has one row per open window: `_partition`, the key columns, `window_start`,
    `window_end` and accumulator columns (prefixed `__`). `partitions` has one row per
    partition seen: `_partition`, `__max_event_time` (the watermark before lateness) and
    `__rows_seen` (which orders first/last across batches). A window is evicted when emitted.

    While the step runs natively (`engine.operators.tumbling_table`), `native` holds both
    instead, and the two tables are stale until `tables` or `leave_native`.
    """

    def __init__(self) -> None:
        self.windows = pl.DataFrame(schema={PARTITION: pl.Int32()})
        self.partitions = pl.DataFrame(
            schema={PARTITION: pl.Int32(), MAX_EVENT_TIME: pl.Int64(), ROWS_SEEN: pl.Int64()}
        )
        self.native: NativeWindows | None = None

    def tables(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The open windows and the partitions' progress, wherever they are held."""
        return self.native.frames() if self.native else (self.windows, self.partitions)

    def enter_native(self, layout: Layout) -> NativeWindows:
        """The native table, made from the tables if the step did not run natively."""
        if self.native is None:
            self.native = NativeWindows.from_frames(layout, self.windows, self.partitions)
        return self.native

    def leave_native(self) -> None:
        """Back to the tables (a batch the native table cannot take)."""
        if self.native is not None:
            self.windows, self.partitions = self.native.frames()
            self.native = None

    def snapshot(self) -> pl.DataFrame:
        """Both tables in one, told apart by `__entry` ("partition" or "window")."""
        windows, partitions = self.tables()
        return pl.concat(
            [
                partitions.with_columns(pl.lit("partition").alias(_ENTRY)),
                windows.with_columns(pl.lit("window").alias(_ENTRY)),
            ],
            how="diagonal_relaxed",
        )

    def restore(self, table: pl.DataFrame) -> None:
        """Replace this state by the one `snapshot` returned."""
        self.partitions = table.filter(pl.col(_ENTRY) == "partition").select(
            PARTITION, MAX_EVENT_TIME, ROWS_SEEN
        )
        self.windows = table.filter(pl.col(_ENTRY) == "window").drop(
            _ENTRY, MAX_EVENT_TIME, ROWS_SEEN
        )
        self.native = None


class _Window(Step, frozen=True, kw_only=True):
    """What the three window steps share: keys, event time, lateness, aggregates, late sink."""

    key_by: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    event_time: str
    aggregates: dict[str, str]
    allowed_lateness_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    late: str | None = None

    stateful: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _parse_aggregates(tuple(self.aggregates.items()))
        names = [*self._key_names(), WINDOW_START, WINDOW_END, *self.aggregates]
        for name in names:
            if name.startswith("_"):
                raise ValueError(
                    f"output column {name!r}: names starting with '_' are reserved for the "
                    f"envelope; rename the key field or aggregate"
                )
            if names.count(name) > 1:
                raise ValueError(
                    f"output column {name!r} appears twice among the keys ({', '.join(self.key_by)}"
                    f"), window_start, window_end and the aggregates; rename one"
                )
        if self.late in (MAIN, DEAD_LETTER):
            raise ValueError(f"late: {self.late!r} is a reserved output name; name a sink")

    def sinks(self) -> tuple[str, ...]:
        return (self.late,) if self.late else ()

    def keyed_by(self) -> tuple[str, ...]:
        return self.key_by

    def check(self, fields: set[str] | None) -> None:
        aggregated = tuple(a.field for a in self._aggregates() if a.field is not None)
        require_fields(self, (*self.key_by, self.event_time, *aggregated), fields)

    def new_state(self) -> WindowState:
        return WindowState()

    def process(self, batch: pl.DataFrame, state: WindowState) -> Outputs:
        """Add the batch's on-time rows to their windows; emit the windows now closed.

        Returns `MAIN` (closed windows, possibly none) and, when rows were set aside, the
        `late` sink and/or `DEAD_LETTER`.
        """
        # The envelope's type; a hand-built batch may carry Int64 partitions.
        batch = batch.with_columns(pl.col(PARTITION).cast(pl.Int32))
        times = batch.select(column(self.event_time).cast(pl.Int64)).to_series()
        untimed = batch.clear()
        if times.null_count():
            untimed = batch.filter(times.is_null())
            batch, times = batch.filter(times.is_not_null()), times.drop_nulls()
        layout = self._native_layout(batch.schema)
        if layout is not None:
            closed, late_rows = state.enter_native(layout).process(batch, times)
            is_late = pl.Series(late_rows)
        else:
            state.leave_native()
            closed, is_late = self._merge(batch, times, state)
        late = batch.filter(is_late) if is_late.any() else batch.clear()

        outputs: Outputs = {MAIN: closed}
        rejected = [(untimed, f"event time {self.event_time!r} is null")]
        if self.late is None:
            rejected.append((late, LATE_REASON))
        elif late.height:
            outputs[self.late] = late
        dead = [self._rejected(rows, reason) for rows, reason in rejected if rows.height]
        if dead:
            outputs[DEAD_LETTER] = pl.concat(dead)
        return outputs

    def _merge(
        self, batch: pl.DataFrame, times: pl.Series, state: WindowState
    ) -> tuple[pl.DataFrame, pl.Series]:
        """The polars path of `process`: the closed windows, and which rows were late."""
        # Only the columns the windows need travel on; whole rows only for the rare late one.
        needed = {PARTITION, KEY, *(path.split(".", 1)[0] for path in self._inputs())}
        narrow = batch.select([name for name in batch.columns if name in needed])
        rows = self._stamp(narrow.with_columns(times.alias(_EVENT_TIME)), state)
        is_late = rows.select(
            self._latest_end(pl.col(_EVENT_TIME)) <= pl.col(_WATERMARK)
        ).to_series()
        if is_late.any():
            rows = rows.filter(~is_late)

        # One lazy plan from the batch's rows to the open and the closed windows: each eager
        # polars call costs ~0.1 ms here, so the dozen steps run as one query.
        units = self._assign(self._units(rows.lazy()))
        windows = self._coalesce(pl.concat([state.windows.lazy(), units], how="diagonal_relaxed"))
        # maintain_order: windows come out in order of their first row, a deterministic
        # order that costs less than sorting by key afterwards.
        watermarks = state.partitions.lazy().select(
            PARTITION, (pl.col(MAX_EVENT_TIME) - self.allowed_lateness_ms).alias(_WATERMARK)
        )
        windows = (
            windows.group_by(
                PARTITION, *self._key_names(), WINDOW_START, WINDOW_END, maintain_order=True
            )
            .agg(
                pl.col(FIRST_SEQUENCE).min(),
                pl.col(LAST_SEQUENCE).max(),
                pl.col(FIRST_KEY).get(pl.col(FIRST_SEQUENCE).arg_min()),
                *[expr for aggregate in self._aggregates() for expr in aggregate.merged()],
            )
            .join(watermarks, on=PARTITION, how="left", maintain_order="left")
            .with_columns((self._closes_at() <= pl.col(_WATERMARK)).alias(_CLOSED))
            .drop(_WATERMARK)
            .cache()
        )
        state.windows, closed = pl.collect_all(
            [
                windows.filter(~pl.col(_CLOSED)).drop(_CLOSED),
                self._emit(windows.filter(pl.col(_CLOSED))),
            ]
        )
        return closed, is_late

    def _native_layout(self, schema: pl.Schema) -> Layout | None:
        """The native table's layout when this step and a batch of `schema` fit it."""
        return None

    def _aggregates(self) -> tuple[Aggregate, ...]:
        return _parse_aggregates(tuple(self.aggregates.items()))

    def _inputs(self) -> list[str]:
        """The (possibly dotted) fields the windows read: keys and aggregated fields."""
        fields = [a.field for a in self._aggregates() if a.field is not None]
        return [*self.key_by, *fields]

    def _key_names(self) -> list[str]:
        return [path.rsplit(".", 1)[-1] for path in self.key_by]

    def _stamp(self, rows: pl.DataFrame, state: WindowState) -> pl.DataFrame:
        """Give each row its arrival position and watermark; advance the partitions' progress.

        Per partition in numpy (partitions are few, rows many): a running maximum of event
        time seeded with the state's, and an arrival counter continuing the state's.
        """
        partitions = rows[PARTITION].to_numpy()
        times = rows[_EVENT_TIME].to_numpy()
        progress = {
            partition: (latest, seen)
            for partition, latest, seen in state.partitions.select(
                PARTITION, MAX_EVENT_TIME, ROWS_SEEN
            ).iter_rows()
        }
        sequence = np.empty(len(times), np.int64)
        watermark = np.empty(len(times), np.int64)
        for partition in np.unique(partitions).tolist():
            at = np.flatnonzero(partitions == partition)
            latest, seen = progress.get(partition, (None, 0))
            running = np.maximum.accumulate(times[at])
            if latest is not None:
                running = np.maximum(running, latest)
            watermark[at] = running - self.allowed_lateness_ms
            sequence[at] = seen + np.arange(len(at))
            progress[partition] = (int(running[-1]), seen + len(at))
        ordered = sorted(progress.items())
        state.partitions = pl.DataFrame(
            {
                PARTITION: [partition for partition, _ in ordered],
                MAX_EVENT_TIME: [latest for _, (latest, _) in ordered],
                ROWS_SEEN: [seen for _, (_, seen) in ordered],
            },
            schema={PARTITION: pl.Int32(), MAX_EVENT_TIME: pl.Int64(), ROWS_SEEN: pl.Int64()},
        )
        return rows.with_columns(pl.Series(_SEQUENCE, sequence), pl.Series(_WATERMARK, watermark))

    def _units(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """One partial aggregate per on-time row: keys, event time, accumulators."""
        aggregates = self._aggregates()
        values = rows.select(
            PARTITION,
            *[
                column(path).alias(name)
                for path, name in zip(self.key_by, self._key_names(), strict=True)
            ],
            _EVENT_TIME,
            _WATERMARK,
            pl.col(_SEQUENCE).alias(FIRST_SEQUENCE),
            pl.col(_SEQUENCE).alias(LAST_SEQUENCE),
            pl.col(KEY).alias(FIRST_KEY),
            *[column(a.field).alias(a.name) for a in aggregates if a.field is not None],
        )
        schema = values.collect_schema()
        return values.select(
            pl.exclude(list(self.aggregates)),
            *[
                expr
                for a in aggregates
                for expr in a.initial(pl.col(a.name), schema.get(a.name, pl.Null()))
            ],
        )

    def _emit(self, closed: pl.LazyFrame) -> pl.LazyFrame:
        return closed.select(
            *self._key_names(),
            WINDOW_START,
            WINDOW_END,
            *[aggregate.result() for aggregate in self._aggregates()],
            PARTITION,
            pl.col(FIRST_KEY).alias(KEY),
        )

    def _rejected(self, rows: pl.DataFrame, reason: str) -> pl.DataFrame:
        return reject(rows, reason, self.name or self.op)

    # What differs between window kinds.

    def _latest_end(self, event_time: pl.Expr) -> pl.Expr:
        """End of the last window a row at `event_time` belongs to (late if ≤ watermark)."""
        raise NotImplementedError

    def _assign(self, units: pl.LazyFrame) -> pl.LazyFrame:
        """Give each unit its window(s) still open under its watermark (`window_start/end`)."""
        raise NotImplementedError

    def _coalesce(self, windows: pl.LazyFrame) -> pl.LazyFrame:
        """Relabel units that belong together with one (start, end); fixed windows already do."""
        return windows

    def _closes_at(self) -> pl.Expr:
        """The watermark at which a window is closed."""
        return pl.col(WINDOW_END)


class TumblingWindow(_Window, tag="tumbling_window"):
    """Aggregate each key over fixed, non-overlapping event-time windows `[start, start + size)`.

    `start = ts - ts mod size_ms`. Guarantees: a window is emitted once, on `MAIN`, after the
    batch in which its partition's watermark (largest event time seen there minus
    `allowed_lateness_ms`) reaches its end; a row whose window has closed is late and counted
    nowhere; open windows are never flushed. Windows are emitted in the order
    of their first rows: deterministic, with no sort.
    Memory: one row per open (partition, key, window).

    Args:
        key_by: fields to group by (dotted for nested; the output column is the last part).
        event_time: Int64 epoch-milliseconds field.
        size_ms: window length (> 0).
        aggregates: output column → `count()`, `sum(f)`, `min(f)`, `max(f)`, `mean(f)`,
            `first(f)`, `last(f)` or `count_distinct(f)`.
        allowed_lateness_ms: how far the watermark trails the largest event time (≥ 0).
        late: sink for late rows; None sends them to `DEAD_LETTER` instead.

    Raises ValueError for an aggregate that does not parse, e.g. `sum amount` or `total()`.

    >>> step = TumblingWindow(key_by=("key",), event_time="ts", size_ms=1000, late="late",
    ...                       aggregates={"count": "count()", "total": "sum(amount)"})
    >>> state = step.new_state()
    >>> batch = pl.DataFrame({"key": ["a", "a", "b", "a"], "ts": [100, 900, 1500, 2300],
    ...                       "amount": [1, 2, 3, 4], "_partition": [0, 0, 0, 0],
    ...                       "_key": [b"a", b"a", b"b", b"a"]})
    >>> step.process(batch, state)["main"].drop("_partition", "_key").rows()
    [('a', 0, 1000, 2, 3), ('b', 1000, 2000, 1, 3)]
    >>> step.process(batch.head(1), state)["late"]["ts"].to_list()
    [100]
    """

    size_ms: Annotated[int, msgspec.Meta(gt=0)]

    def _latest_end(self, event_time: pl.Expr) -> pl.Expr:
        return event_time // self.size_ms * self.size_ms + self.size_ms

    def _native_layout(self, schema: pl.Schema) -> Layout | None:
        # counts and integer sums per one string key: the native table (W1's window)
        aggregates = self._aggregates()
        if len(self.key_by) != 1 or "." in self.key_by[0]:
            return None
        if any(a.function not in ("count", "sum") or "." in (a.field or "") for a in aggregates):
            return None
        layout = Layout(
            self.key_by[0],
            self.size_ms,
            self.allowed_lateness_ms,
            tuple(
                (a._part(a.function), "c" if a.function == "count" else "s", a.field, a.name)
                for a in aggregates
            ),
        )
        return layout if layout.fits(schema) else None

    def _assign(self, units: pl.LazyFrame) -> pl.LazyFrame:
        start = pl.col(_EVENT_TIME) // self.size_ms * self.size_ms
        return units.with_columns(
            start.alias(WINDOW_START), (start + self.size_ms).alias(WINDOW_END)
        ).drop(_EVENT_TIME, _WATERMARK)


class SlidingWindow(_Window, tag="sliding_window"):
    """Aggregate each key over overlapping windows `[start, start + size)`, one per slide.

    Window starts are the multiples of `slide_ms`; a row belongs to every window containing
    it (about size/slide of them). Guarantees: a row is counted in each of its windows still
    open under its watermark and is late (counted nowhere) only when all of them have closed;
    a window is emitted once, after the batch in which its partition's watermark reaches its
    end; open windows are never flushed. Windows are emitted in the order
    of their first rows: deterministic, with no sort.
    Memory: one row per open (partition, key, window), up to size/slide windows per key.

    Args:
        key_by, event_time, aggregates, allowed_lateness_ms, late: as for `TumblingWindow`.
        size_ms: window length (> 0).
        slide_ms: distance between window starts (> 0, at most `size_ms`).

    Raises ValueError when `slide_ms` exceeds `size_ms` (rows would fall between windows).

    >>> step = SlidingWindow(key_by=("key",), event_time="ts", size_ms=1000, slide_ms=500,
    ...                      aggregates={"count": "count()"})
    >>> batch = pl.DataFrame({"key": ["a", "a"], "ts": [700, 2000], "_partition": [0, 0],
    ...                       "_key": [b"a", b"a"]})
    >>> step.process(batch, step.new_state())["main"].drop("_partition", "_key").rows()
    [('a', 0, 1000, 1), ('a', 500, 1500, 1)]
    """

    size_ms: Annotated[int, msgspec.Meta(gt=0)]
    slide_ms: Annotated[int, msgspec.Meta(gt=0)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.slide_ms > self.size_ms:
            raise ValueError(
                f"slide_ms: {self.slide_ms} is larger than size_ms ({self.size_ms}); rows "
                f"between windows would be dropped, expected slide_ms <= size_ms"
            )

    def _latest_end(self, event_time: pl.Expr) -> pl.Expr:
        return event_time // self.slide_ms * self.slide_ms + self.size_ms

    def _assign(self, units: pl.LazyFrame) -> pl.LazyFrame:
        first = (pl.col(_EVENT_TIME) - self.size_ms) // self.slide_ms + 1
        last = pl.col(_EVENT_TIME) // self.slide_ms
        start = pl.col(WINDOW_START) * self.slide_ms
        return (
            units.with_columns(pl.int_ranges(first, last + 1).alias(WINDOW_START))
            .explode(WINDOW_START)
            .with_columns(start.alias(WINDOW_START), (start + self.size_ms).alias(WINDOW_END))
            .filter(pl.col(WINDOW_END) > pl.col(_WATERMARK))
            .drop(_EVENT_TIME, _WATERMARK)
        )


class SessionWindow(_Window, tag="session_window"):
    """Aggregate each key over sessions: runs of rows less than `gap_ms` apart in event time.

    A row at `ts` spans `[ts, ts + gap)`; spans of one key that overlap merge into a session,
    including sessions left open by earlier batches. Output `window_start` is the session's
    first event time and `window_end` its last event time + gap. Guarantees: a row is late
    (counted nowhere) when `ts + gap ≤` its watermark. A session is emitted once, when its
    partition's watermark reaches `window_end + gap - 1`: only then can no on-time row
    (`ts > watermark - gap`) reach it any more, and emitting it earlier would make the output
    depend on where batches split.
    Open sessions are never flushed. Windows are emitted in the order
    of their first rows: deterministic, with no sort.
    Memory: one row per open (partition, key, session).

    Args:
        key_by, event_time, aggregates, allowed_lateness_ms, late: as for `TumblingWindow`.
        gap_ms: inactivity that ends a session (> 0).

    >>> step = SessionWindow(key_by=("key",), event_time="ts", gap_ms=100,
    ...                      aggregates={"count": "count()"})
    >>> batch = pl.DataFrame({"key": ["a", "a", "a", "a"], "ts": [0, 60, 400, 1000],
    ...                       "_partition": [0, 0, 0, 0], "_key": [b"a", b"a", b"a", b"a"]})
    >>> step.process(batch, step.new_state())["main"].drop("_partition", "_key").rows()
    [('a', 0, 160, 2), ('a', 400, 500, 1)]
    """

    gap_ms: Annotated[int, msgspec.Meta(gt=0)]

    def _latest_end(self, event_time: pl.Expr) -> pl.Expr:
        return event_time + self.gap_ms

    def _assign(self, units: pl.LazyFrame) -> pl.LazyFrame:
        return units.with_columns(
            pl.col(_EVENT_TIME).alias(WINDOW_START),
            (pl.col(_EVENT_TIME) + self.gap_ms).alias(WINDOW_END),
        ).drop(_EVENT_TIME, _WATERMARK)

    def _coalesce(self, windows: pl.LazyFrame) -> pl.LazyFrame:
        keys = [PARTITION, *self._key_names()]
        ordered = windows.sort(*keys, WINDOW_START)
        reach = pl.col(WINDOW_END).cum_max().shift(1).over(keys)
        # Sorted rows of one key start a new session unless an earlier span reaches them;
        # the first row of each key starts one, so a global running count numbers sessions.
        starts = reach.is_null() | (pl.col(WINDOW_START) >= reach)
        return (
            ordered.with_columns(starts.cum_sum().alias(_SESSION))
            .with_columns(
                pl.col(WINDOW_START).min().over(_SESSION), pl.col(WINDOW_END).max().over(_SESSION)
            )
            .drop(_SESSION)
        )

    def _closes_at(self) -> pl.Expr:
        # On-time rows have ts > watermark - gap; none reaches a session ending at or below it.
        return pl.col(WINDOW_END) + self.gap_ms - 1
