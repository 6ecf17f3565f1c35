"""Window steps: when windows close, where late rows go, what state carries, every aggregate."""

from __future__ import annotations

import json

import msgspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from engine.batch import DEAD_LETTER_SCHEMA
from engine.errors import ConfigError
from engine.operators.base import DEAD_LETTER, MAIN
from engine.operators.window import (
    LATE_REASON,
    SessionWindow,
    SlidingWindow,
    TumblingWindow,
    WindowState,
)

COUNT = {"count": "count()"}


def events(*rows: tuple[int, str, int] | tuple[int, str, int, int | None]) -> pl.DataFrame:
    """Rows of (partition, key, ts[, amount]); `_key` is the key's bytes plus the row number."""
    return pl.DataFrame(
        {
            "key": [row[1] for row in rows],
            "ts": pl.Series([row[2] for row in rows], dtype=pl.Int64),
            "amount": pl.Series([row[3] if len(row) > 3 else 1 for row in rows], dtype=pl.Int32),
            "_partition": pl.Series([row[0] for row in rows], dtype=pl.Int32),
            "_key": pl.Series([f"{row[1]}#{i}".encode() for i, row in enumerate(rows)]),
        }
    )


def windows(output: dict[str, pl.DataFrame], *columns: str) -> list[tuple[object, ...]]:
    """The main output as sorted (partition, key, window_start, window_end, *columns) tuples."""
    main = output[MAIN]
    return sorted(main.select("_partition", "key", "window_start", "window_end", *columns).rows())


def tumbling(**options: object) -> TumblingWindow:
    fields: dict[str, object] = {
        "key_by": ("key",),
        "event_time": "ts",
        "size_ms": 1000,
        "allowed_lateness_ms": 1000,
        "aggregates": {"count": "count()", "sum_cents": "sum(amount)"},
        "late": "late",
    }
    return TumblingWindow(**{**fields, **options})  # type: ignore[arg-type]


# Tumbling: W1's step 6.


def test_tumbling_window_closes_when_the_watermark_reaches_its_end() -> None:
    step = tumbling()
    state = step.new_state()
    assert windows(step.process(events((0, "a", 100, 5), (0, "a", 900, 7)), state)) == []
    # Largest ts 1999: watermark 999 < end 1000, the window stays open.
    assert windows(step.process(events((0, "b", 1999)), state)) == []
    # Largest ts 2000: watermark 1000 = end, the window closes, once.
    closed = step.process(events((0, "b", 2000)), state)
    assert windows(closed, "count", "sum_cents") == [(0, "a", 0, 1000, 2, 12)]
    assert windows(step.process(events((0, "b", 2001)), state)) == []
    assert windows(step.process(events((0, "c", 2999)), state), "count") == []
    assert windows(step.process(events((0, "c", 3000)), state), "count") == [
        (0, "b", 1000, 2000, 1)
    ]


def test_a_row_within_a_batch_sees_the_watermark_of_the_rows_before_it() -> None:
    step = tumbling()
    # 500 arrives after 2500 in the same batch: its window [0, 1000) ended at the watermark
    # 1500 already, so it is late; 1200 is in [1000, 2000), still open, and counted.
    output = step.process(events((0, "a", 2500), (0, "a", 500), (0, "a", 1200)), step.new_state())
    assert output["late"]["ts"].to_list() == [500]
    assert windows(output) == []


def test_late_row_goes_unchanged_to_the_late_sink_and_is_counted_nowhere() -> None:
    step = tumbling()
    state = step.new_state()
    step.process(events((0, "a", 100), (0, "a", 2100)), state)
    late_batch = events((0, "a", 999, 40), (0, "a", 1000, 2))
    output = step.process(late_batch, state)
    assert_frame_equal(output["late"], late_batch.head(1))
    assert step.sinks() == ("late",)
    later = step.process(events((0, "z", 5000)), state)
    # [1000, 2000) holds the on-time row at 1000 only; the late row's 40 is nowhere.
    assert windows(later, "count", "sum_cents") == [
        (0, "a", 1000, 2000, 1, 2),
        (0, "a", 2000, 3000, 1, 1),
    ]


def test_late_rows_without_a_sink_are_dead_lettered_with_their_reason() -> None:
    step = tumbling(late=None, name="agg")
    state = step.new_state()
    step.process(events((0, "a", 5000)), state)
    output = step.process(events((0, "a", 10, 3)), state)
    dead = output[DEAD_LETTER]
    assert dead.schema == DEAD_LETTER_SCHEMA
    assert dead["_reason"].to_list() == [LATE_REASON]
    assert dead["_stage"].to_list() == ["agg"]
    assert json.loads(dead["_raw"][0]) == {"key": "a", "ts": 10, "amount": 3}
    assert dead["_key"].to_list() == [b"a#0"]
    assert step.sinks() == ()


def test_a_null_event_time_is_dead_lettered_not_lost() -> None:
    step = tumbling()
    batch = events((0, "a", 1)).with_columns(pl.lit(None, pl.Int64).alias("ts"))
    output = step.process(batch, step.new_state())
    assert output[DEAD_LETTER]["_reason"].to_list() == ["event time 'ts' is null"]
    assert output[MAIN].is_empty()


def test_watermarks_are_per_partition() -> None:
    step = tumbling()
    state = step.new_state()
    output = step.process(events((0, "a", 100), (1, "a", 100), (1, "a", 99_000)), state)
    # Partition 1 is far ahead: it closes its own [0, 1000) window, not partition 0's.
    assert windows(output, "count") == [(1, "a", 0, 1000, 1)]
    # A row at 150 is on time on partition 0, although late by partition 1's watermark.
    output = step.process(events((0, "a", 150), (0, "b", 2000)), state)
    assert windows(output, "count") == [(0, "a", 0, 1000, 2)]
    assert "late" not in output


def test_output_columns_types_and_order() -> None:
    step = TumblingWindow(
        key_by=("attrs.tier", "region"),
        event_time="ts",
        size_ms=10,
        allowed_lateness_ms=10,
        aggregates={"n": "count()", "total": "sum(amount)"},
    )
    batch = pl.DataFrame(
        {
            "attrs": [{"tier": t} for t in ["gold", "bronze", "gold", "gold", "x"]],
            "region": ["eu", "eu", "us", "eu", "eu"],
            "ts": [5, 12, 3, 1, 100],
            "amount": pl.Series([1, 2, 3, 4, 5], dtype=pl.Int32),
            "_partition": pl.Series([0, 0, 0, 0, 0], dtype=pl.Int32),
            "_key": [b"k1", b"k2", b"k3", b"k4", b"k5"],
        }
    )
    main = step.process(batch, step.new_state())[MAIN]
    assert main.schema == pl.Schema(
        {
            "tier": pl.String(),
            "region": pl.String(),
            "window_start": pl.Int64(),
            "window_end": pl.Int64(),
            "n": pl.Int64(),
            "total": pl.Int64(),
            "_partition": pl.Int32(),
            "_key": pl.Binary(),
        }
    )
    # In order of each window's first row; `_key` is the first arriving row's.
    assert main.rows() == [
        ("gold", "eu", 0, 10, 2, 5, 0, b"k1"),
        ("bronze", "eu", 10, 20, 1, 2, 0, b"k2"),
        ("gold", "us", 0, 10, 1, 3, 0, b"k3"),
    ]


STREAM = [
    (0, "a", 100, 1),
    (1, "b", 400, 2),
    (0, "b", 1700, 3),
    (0, "a", 650, 4),
    (1, "b", 2600, 5),
    (0, "a", 2900, 6),
    (1, "a", 1650, 7),
    (0, "a", 1100, 8),
    (0, "b", 4100, 9),
    (1, "a", 3900, 10),
    (0, "a", 1950, 11),
    (1, "b", 6000, 12),
    (0, "a", 3000, 13),
    (0, "b", 8000, 14),
]

STEPS = [
    tumbling(),
    SlidingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=1000,
        slide_ms=400,
        allowed_lateness_ms=300,
        aggregates={"count": "count()", "sum_cents": "sum(amount)"},
        late="late",
    ),
    SessionWindow(
        key_by=("key",),
        event_time="ts",
        gap_ms=600,
        allowed_lateness_ms=500,
        aggregates={"count": "count()", "sum_cents": "sum(amount)"},
        late="late",
    ),
]


def run(
    step: TumblingWindow | SlidingWindow | SessionWindow, sizes: list[int]
) -> tuple[list[tuple[object, ...]], list[int]]:
    """Feed STREAM in batches of `sizes`: the closed windows and late event times, sorted."""
    state = step.new_state()
    closed: list[tuple[object, ...]] = []
    late: list[int] = []
    start = 0
    for size in sizes:
        output = step.process(events(*STREAM[start : start + size]), state)
        start += size
        closed += windows(output, "count", "sum_cents")
        late += output["late"]["ts"].to_list() if "late" in output else []
    return sorted(closed), sorted(late)


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.op)
def test_splitting_the_input_into_batches_changes_nothing(
    step: TumblingWindow | SlidingWindow | SessionWindow,
) -> None:
    whole = run(step, [len(STREAM)])
    assert whole[0], "the stream must close some windows"
    assert whole[1], "the stream must hold late rows"
    assert run(step, [1] * len(STREAM)) == whole
    assert run(step, [3, 5, 1, 5]) == whole


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.op)
def test_snapshot_then_restore_in_a_fresh_state_continues_the_same(
    step: TumblingWindow | SlidingWindow | SessionWindow,
) -> None:
    original = step.new_state()
    head, tail = events(*STREAM[:7]), events(*STREAM[7:])
    step.process(head, original)
    snapshot = original.snapshot()
    kept = snapshot.clone()
    expected = step.process(tail, original)

    restored = step.new_state()
    restored.restore(snapshot)
    continued = step.process(tail, restored)
    assert windows(continued), "the continuation must close some windows"
    assert windows(continued, "count", "sum_cents") == windows(expected, "count", "sum_cents")
    assert_frame_equal(continued["late"], expected["late"])
    assert_frame_equal(restored.snapshot(), original.snapshot(), check_row_order=False)
    # The snapshot is a copy: the state moving on did not change it.
    assert_frame_equal(snapshot, kept)


def test_a_fresh_state_snapshots_and_restores() -> None:
    step = tumbling()
    state = WindowState()
    state.restore(WindowState().snapshot())
    output = step.process(events((0, "a", 10), (0, "a", 5000)), state)
    assert windows(output, "count") == [(0, "a", 0, 1000, 1)]


def test_finish_does_not_flush_open_windows() -> None:
    step = tumbling()
    state = step.new_state()
    step.process(events((0, "a", 10)), state)
    assert step.finish(state) == {}


def test_every_aggregate_merges_across_batches() -> None:
    step = TumblingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=100,
        aggregates={
            "n": "count()",
            "total": "sum(amount)",
            "low": "min(amount)",
            "high": "max(amount)",
            "average": "mean(amount)",
            "earliest": "first(amount)",
            "latest": "last(amount)",
            "distinct": "count_distinct(amount)",
            "first_label": "first(attrs.label)",
            "top_label": "max(attrs.label)",
        },
    )
    rows = [(50, 4, "x"), (10, None, "y"), (20, 9, "z"), (30, 4, None), (60, -1, "w")]
    frame = pl.DataFrame(
        {
            "key": ["a"] * len(rows),
            "ts": [row[0] for row in rows],
            "amount": pl.Series([row[1] for row in rows], dtype=pl.Int32),
            "attrs": [{"label": row[2]} for row in rows],
            "_partition": pl.Series([0] * len(rows), dtype=pl.Int32),
            "_key": [b"a"] * len(rows),
        }
    )
    closing = frame.head(1).with_columns(
        pl.lit(500, pl.Int64).alias("ts"), pl.lit("b").alias("key")
    )
    state = step.new_state()
    step.process(frame.head(2), state)
    step.process(frame.slice(2, 2), state)
    main = step.process(pl.concat([frame.tail(1), closing]), state)[MAIN]
    assert main.drop("key", "window_start", "window_end", "_partition", "_key").to_dicts() == [
        {
            "n": 5,
            "total": 16,
            "low": -1,
            "high": 9,
            "average": 4.0,
            "earliest": 4,  # first by arrival, not by event time
            "latest": -1,
            "distinct": 3,  # 4, 9, -1: nulls are not values
            "first_label": "x",
            "top_label": "z",
        }
    ]
    assert main.schema["total"] == pl.Int64()
    assert main.schema["distinct"] == pl.Int64()


def test_aggregates_of_no_values() -> None:
    step = TumblingWindow(
        key_by=("key",),
        event_time="ts",
        size_ms=100,
        aggregates={"total": "sum(amount)", "low": "min(amount)", "average": "mean(amount)"},
    )
    batch = events((0, "a", 1, None), (0, "b", 500))
    assert step.process(batch, step.new_state())[MAIN].select("total", "low", "average").rows() == [
        (0, None, None)
    ]


# Sliding windows.


def sliding(**options: object) -> SlidingWindow:
    fields: dict[str, object] = {
        "key_by": ("key",),
        "event_time": "ts",
        "size_ms": 300,
        "slide_ms": 100,
        "aggregates": {"count": "count()", "sum_cents": "sum(amount)"},
        "late": "late",
    }
    return SlidingWindow(**{**fields, **options})  # type: ignore[arg-type]


def test_sliding_row_is_counted_in_every_window_containing_it() -> None:
    step = sliding()
    output = step.process(events((0, "a", 250, 5), (0, "b", 1000)), step.new_state())
    assert windows(output, "count", "sum_cents") == [
        (0, "a", 0, 300, 1, 5),
        (0, "a", 100, 400, 1, 5),
        (0, "a", 200, 500, 1, 5),
    ]


def test_sliding_row_is_counted_only_in_its_open_windows_and_late_when_none_is_left() -> None:
    step = sliding()
    state = step.new_state()
    assert windows(step.process(events((0, "b", 420)), state)) == []
    # Watermark 420: of 250's windows [0,300), [100,400) and [200,500) only the last is open.
    output = step.process(events((0, "a", 250, 5), (0, "a", 90, 7)), state)
    assert output["late"]["ts"].to_list() == [90]
    output = step.process(events((0, "b", 900)), state)
    assert windows(output, "count", "sum_cents") == [
        (0, "a", 200, 500, 1, 5),
        (0, "b", 200, 500, 1, 1),
        (0, "b", 300, 600, 1, 1),
        (0, "b", 400, 700, 1, 1),
    ]


def test_sliding_windows_with_a_slide_that_does_not_divide_the_size() -> None:
    step = sliding(size_ms=250, slide_ms=100)
    output = step.process(events((0, "a", 240), (0, "b", 1000)), step.new_state())
    assert windows(output) == [(0, "a", 0, 250), (0, "a", 100, 350), (0, "a", 200, 450)]


# Session windows.


def session(**options: object) -> SessionWindow:
    fields: dict[str, object] = {
        "key_by": ("key",),
        "event_time": "ts",
        "gap_ms": 100,
        "aggregates": {"count": "count()", "sum_cents": "sum(amount)"},
        "late": "late",
    }
    return SessionWindow(**{**fields, **options})  # type: ignore[arg-type]


def test_session_rows_within_the_gap_merge_and_a_gap_splits() -> None:
    step = session()
    batch = events((0, "a", 0, 1), (0, "a", 99, 2), (0, "a", 198, 4), (0, "a", 298, 8))
    state = step.new_state()
    assert windows(step.process(batch, state)) == []
    output = step.process(events((0, "z", 1000)), state)
    # 298 is exactly one gap after 198: [198, 298) and [298, 398) touch, they do not overlap.
    assert windows(output, "count", "sum_cents") == [
        (0, "a", 0, 298, 3, 7),
        (0, "a", 298, 398, 1, 8),
    ]


def test_session_row_bridges_two_open_sessions_across_batches() -> None:
    step = session(allowed_lateness_ms=1000)
    state = step.new_state()
    step.process(events((0, "a", 0, 1), (0, "a", 180, 2)), state)
    step.process(events((0, "a", 90, 4)), state)
    output = step.process(events((0, "z", 1480)), state)
    assert windows(output, "count", "sum_cents") == [(0, "a", 0, 280, 3, 7)]


def test_session_closes_once_no_on_time_row_can_reach_it() -> None:
    step = session()
    state = step.new_state()
    step.process(events((0, "a", 100, 1)), state)
    # Watermark 298: a row at 199 is on time (199 + 100 > 298) and reaches [100, 200).
    step.process(events((0, "z", 298)), state)
    output = step.process(events((0, "a", 199, 2), (0, "a", 150, 4)), state)
    assert output["late"]["ts"].to_list() == [150]
    assert windows(output) == []
    # The session ends at 299; on-time rows have ts > watermark - 100, so it closes once
    # the watermark is 398 and no such row can be before 299.
    assert windows(step.process(events((0, "z", 397)), state)) == []
    output = step.process(events((0, "z", 398)), state)
    assert windows(output, "count", "sum_cents") == [(0, "a", 100, 299, 2, 3)]


# Configuration.


def test_step_facts() -> None:
    step = tumbling()
    assert step.op == "tumbling_window"
    assert step.stateful
    assert step.keyed_by() == ("key",)
    assert isinstance(step.new_state(), WindowState)
    assert sliding().op == "sliding_window"
    assert session().op == "session_window"


@pytest.mark.parametrize(
    ("aggregates", "message"),
    [
        (
            {"total": "summ(amount)"},
            "aggregate 'total': cannot parse 'summ(amount)'; expected count(), sum(f), min(f), "
            "max(f), mean(f), first(f), last(f) or count_distinct(f)",
        ),
        (
            {"total": "sum amount"},
            "aggregate 'total': cannot parse 'sum amount'; expected count(), sum(f), min(f), "
            "max(f), mean(f), first(f), last(f) or count_distinct(f)",
        ),
        ({"n": "count(id)"}, "aggregate 'n': count() takes no field, got 'count(id)'"),
        (
            {"total": "sum()"},
            "aggregate 'total': sum(f) needs a field name (dotted for a nested field), got 'sum()'",
        ),
        (
            {"_n": "count()"},
            "output column '_n': names starting with '_' are reserved for the envelope; "
            "rename the key field or aggregate",
        ),
        (
            {"key": "count()"},
            "output column 'key' appears twice among the keys (key), window_start, window_end "
            "and the aggregates; rename one",
        ),
    ],
)
def test_bad_aggregates_fail_at_construction(aggregates: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        tumbling(aggregates=aggregates)
    assert str(error.value) == message


def test_loading_a_bad_aggregate_names_the_path() -> None:
    spec = {
        "op": "tumbling_window",
        "key_by": ["key"],
        "event_time": "ts",
        "size_ms": 1000,
        "aggregates": {"n": "cnt()"},
    }
    with pytest.raises(msgspec.ValidationError) as error:
        msgspec.convert({"steps": [spec]}, dict[str, list[TumblingWindow]])
    assert str(error.value) == (
        "aggregate 'n': cannot parse 'cnt()'; expected count(), sum(f), min(f), max(f), "
        "mean(f), first(f), last(f) or count_distinct(f) - at `$[...][0]`"
    )


@pytest.mark.parametrize(
    ("step", "fields", "message"),
    [
        ("size_ms", 0, "Expected `int` >= 1 - at `$.size_ms`"),
        ("allowed_lateness_ms", -1, "Expected `int` >= 0 - at `$.allowed_lateness_ms`"),
        ("key_by", [], "Expected `array` of length >= 1 - at `$.key_by`"),
    ],
)
def test_loading_out_of_range_fields_names_the_path(
    step: str, fields: object, message: str
) -> None:
    spec = {
        "op": "tumbling_window",
        "key_by": ["key"],
        "event_time": "ts",
        "size_ms": 1000,
        "aggregates": COUNT,
        step: fields,
    }
    with pytest.raises(msgspec.ValidationError) as error:
        msgspec.convert(spec, TumblingWindow)
    assert str(error.value) == message


def test_slide_larger_than_size_fails() -> None:
    with pytest.raises(ValueError) as error:
        sliding(size_ms=100, slide_ms=200)
    assert str(error.value) == (
        "slide_ms: 200 is larger than size_ms (100); rows between windows would be dropped, "
        "expected slide_ms <= size_ms"
    )


def test_late_sink_cannot_be_a_reserved_output() -> None:
    with pytest.raises(ValueError) as error:
        session(late="main")
    assert str(error.value) == "late: 'main' is a reserved output name; name a sink"


def test_check_names_a_missing_field() -> None:
    step = tumbling(aggregates={"total": "sum(attrs.amount)"}, name="agg")
    step.check({"key", "ts", "attrs"})
    with pytest.raises(ConfigError) as error:
        step.check({"key", "ts", "amount"})
    assert str(error.value) == (
        "step 'agg' (tumbling_window): field 'attrs.amount' is not in its input "
        "(fields: amount, key, ts)"
    )
