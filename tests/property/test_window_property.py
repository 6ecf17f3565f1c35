"""Window steps against a naive row-at-a-time reference, whatever the batch boundaries.

The reference keeps plain dicts of open windows, advances the partition's watermark with
each row, decides lateness for that row alone, and closes windows after every row. The
steps process the same rows split into random batches, sometimes restoring their state from
a snapshot into a fresh state object between batches; the closed windows and the late rows
must be the same multisets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.operators.base import MAIN
from engine.operators.window import SessionWindow, SlidingWindow, TumblingWindow

AGGREGATES = {
    "n": "count()",
    "total": "sum(amount)",
    "low": "min(amount)",
    "high": "max(amount)",
    "average": "mean(amount)",
    "earliest": "first(amount)",
    "latest": "last(amount)",
    "distinct": "count_distinct(amount)",
}

# Counts and integer sums of a string key: tumbling windows take the native table for them.
NATIVE = ("n", "total")

Window = tuple[object, ...]


@dataclass(frozen=True)
class Event:
    id: int
    partition: int
    key: str
    ts: int
    amount: int | None


def summary(partition: int, key: str, start: int, end: int, events: list[Event]) -> Window:
    """A closed window as the step emits it, computed from its events in plain Python."""
    arrived = sorted(events, key=lambda event: event.id)
    amounts = [event.amount for event in arrived if event.amount is not None]
    return (
        partition,
        key,
        start,
        end,
        len(arrived),
        sum(amounts),
        min(amounts, default=None),
        max(amounts, default=None),
        sum(amounts) / len(amounts) if amounts else None,
        arrived[0].amount,
        arrived[-1].amount,
        len(set(amounts)),
        f"{arrived[0].id}".encode(),
    )


def fixed_windows(
    events: list[Event], size: int, slide: int, lateness: int
) -> tuple[Counter[Window], Counter[int]]:
    """Tumbling (slide == size) or sliding windows, one row at a time."""
    largest: dict[int, int] = {}
    open_windows: dict[tuple[int, str, int], list[Event]] = {}
    closed: Counter[Window] = Counter()
    late: Counter[int] = Counter()
    for event in events:
        largest[event.partition] = max(largest.get(event.partition, event.ts), event.ts)
        watermark = largest[event.partition] - lateness
        starts = range(event.ts - event.ts % slide, event.ts - size, -slide)
        still_open = [start for start in starts if start + size > watermark]
        if not still_open:
            late[event.id] += 1
        for start in still_open:
            open_windows.setdefault((event.partition, event.key, start), []).append(event)
        for partition, key, start in list(open_windows):
            if partition == event.partition and start + size <= watermark:
                rows = open_windows.pop((partition, key, start))
                closed[summary(partition, key, start, start + size, rows)] += 1
    return closed, late


def sessions(events: list[Event], gap: int, lateness: int) -> tuple[Counter[Window], Counter[int]]:
    """Session windows, one row at a time: merge every open session the new row overlaps."""
    largest: dict[int, int] = {}
    open_sessions: dict[tuple[int, str], list[list[Event]]] = {}
    closed: Counter[Window] = Counter()
    late: Counter[int] = Counter()
    for event in events:
        largest[event.partition] = max(largest.get(event.partition, event.ts), event.ts)
        watermark = largest[event.partition] - lateness
        if event.ts + gap <= watermark:
            late[event.id] += 1
        else:
            of_key = open_sessions.setdefault((event.partition, event.key), [])
            merged = [event]
            for session in list(of_key):
                start = min(row.ts for row in session)
                end = max(row.ts for row in session) + gap
                if start < event.ts + gap and event.ts < end:
                    of_key.remove(session)
                    merged += session
            of_key.append(merged)
        for (partition, key), of_key in open_sessions.items():
            if partition != event.partition:
                continue
            for session in list(of_key):
                end = max(row.ts for row in session) + gap
                # No on-time row (ts > watermark - gap) can reach the session any more.
                if end <= watermark - gap + 1:
                    of_key.remove(session)
                    start = min(row.ts for row in session)
                    closed[summary(partition, key, start, end, session)] += 1
    return closed, late


def batch(events: list[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": pl.Series([event.id for event in events], dtype=pl.Int64),
            "key": pl.Series([event.key for event in events], dtype=pl.String),
            "ts": pl.Series([event.ts for event in events], dtype=pl.Int64),
            "amount": pl.Series([event.amount for event in events], dtype=pl.Int64),
            "_partition": pl.Series([event.partition for event in events], dtype=pl.Int32),
            "_key": pl.Series([f"{event.id}".encode() for event in events], dtype=pl.Binary),
        }
    )


def only(
    expected: tuple[Counter[Window], Counter[int]], names: tuple[str, ...]
) -> tuple[Counter[Window], Counter[int]]:
    """The reference's windows with only the aggregates `names`."""
    closed, late = expected
    keep = [*range(4), *(4 + list(AGGREGATES).index(name) for name in names), -1]
    projected: Counter[Window] = Counter()
    for window, count in closed.items():
        projected[tuple(window[i] for i in keep)] += count
    return projected, late


def run_step(
    step: TumblingWindow | SlidingWindow | SessionWindow,
    events: list[Event],
    cuts: list[int],
    restores: list[bool],
    float_batches: frozenset[int] = frozenset(),
) -> tuple[Counter[Window], Counter[int]]:
    """Process `events` split at `cuts`; after batch i, restore into a fresh state if asked.
    Batches numbered in `float_batches` carry `amount` as floats (which native windows do
    not take: the step moves to polars and back)."""
    state = step.new_state()
    closed: Counter[Window] = Counter()
    late: Counter[int] = Counter()
    bounds = [0, *sorted(set(cuts)), len(events)]
    for index, (start, stop) in enumerate(pairwise(bounds)):
        rows = batch(events[start:stop])
        if index in float_batches:
            rows = rows.with_columns(pl.col("amount").cast(pl.Float64))
        output = step.process(rows, state)
        columns = ["_partition", "key", "window_start", "window_end", *step.aggregates, "_key"]
        closed.update(output[MAIN].select(columns).rows())
        if "late" in output:
            late.update(output["late"]["id"].to_list())
        if restores[index]:
            snapshot = state.snapshot()
            state = step.new_state()
            state.restore(snapshot)
    assert step.finish(state) == {}
    return closed, late


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], list[int], list[bool]]:
    """Events drifting forward in time with jitter (so out of order and late), random splits."""
    count = draw(st.integers(0, 40))
    events = [
        Event(
            id=index,
            partition=draw(st.integers(0, 2)),
            key=draw(st.sampled_from("abc")),
            ts=index * draw(st.sampled_from([5, 20, 40])) + draw(st.integers(0, 300)),
            amount=draw(st.none() | st.integers(-3, 3)),
        )
        for index in range(count)
    ]
    cuts = draw(st.lists(st.integers(0, count), max_size=5))
    restores = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return events, cuts, restores


lateness = st.sampled_from([0, 50, 200])


@settings(max_examples=60, deadline=None)
@given(streams(), st.sampled_from([50, 100, 250]), lateness)
def test_tumbling_matches_the_reference(
    stream: tuple[list[Event], list[int], list[bool]], size: int, allowed_lateness: int
) -> None:
    events, cuts, restores = stream
    step = TumblingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=size,
        allowed_lateness_ms=allowed_lateness,
        aggregates=AGGREGATES,
        late="late",
    )
    expected = fixed_windows(events, size, size, allowed_lateness)
    assert run_step(step, events, cuts, restores) == expected


@settings(max_examples=60, deadline=None)
@given(
    streams(),
    st.sampled_from([(100, 50), (150, 70), (200, 200), (250, 100)]),
    lateness,
)
def test_sliding_matches_the_reference(
    stream: tuple[list[Event], list[int], list[bool]],
    size_and_slide: tuple[int, int],
    allowed_lateness: int,
) -> None:
    events, cuts, restores = stream
    size, slide = size_and_slide
    step = SlidingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=size,
        slide_ms=slide,
        allowed_lateness_ms=allowed_lateness,
        aggregates=AGGREGATES,
        late="late",
    )
    expected = fixed_windows(events, size, slide, allowed_lateness)
    assert run_step(step, events, cuts, restores) == expected


@settings(max_examples=60, deadline=None)
@given(streams(), st.sampled_from([50, 100, 250]), lateness, st.frozensets(st.integers(0, 5)))
def test_native_tumbling_counts_and_sums_match_the_reference(
    stream: tuple[list[Event], list[int], list[bool]],
    size: int,
    allowed_lateness: int,
    float_batches: frozenset[int],
) -> None:
    """W1's kind of window (counts and integer sums per string key) runs natively; batches
    it cannot take move the state to polars and back, with the same outputs."""
    events, cuts, restores = stream
    step = TumblingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=size,
        allowed_lateness_ms=allowed_lateness,
        aggregates={name: AGGREGATES[name] for name in NATIVE},
        late="late",
    )
    expected = only(fixed_windows(events, size, size, allowed_lateness), NATIVE)
    assert run_step(step, events, cuts, restores, float_batches) == expected


@settings(max_examples=60, deadline=None)
@given(streams(), st.sampled_from([10, 40, 120]), lateness)
def test_session_matches_the_reference(
    stream: tuple[list[Event], list[int], list[bool]], gap: int, allowed_lateness: int
) -> None:
    events, cuts, restores = stream
    step = SessionWindow(
        key_by=("key",),
        event_time="ts",
        gap_ms=gap,
        allowed_lateness_ms=allowed_lateness,
        aggregates=AGGREGATES,
        late="late",
    )
    expected = sessions(events, gap, allowed_lateness)
    assert run_step(step, events, cuts, restores) == expected
