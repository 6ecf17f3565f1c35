"""Resequence releases each key's rows in sequence order and gives up gaps in event time."""

from __future__ import annotations

import msgspec
import polars as pl
import pytest

from engine.errors import ConfigError
from engine.operators.resequence import Resequence, ResequenceState

STEP = Resequence(key_by=("k",), sequence="seq", event_time="ts", gap_timeout_ms=100)


def batch(k: list[str], seq: list[int | None], ts: list[int | None], **extra: list) -> pl.DataFrame:
    partitions = extra.pop("_partition", [0] * len(k))
    return pl.DataFrame(
        {"k": k, "seq": seq, "ts": ts, **extra, "_partition": partitions},
        schema_overrides={"seq": pl.Int64, "ts": pl.Int64, "_partition": pl.Int32},
    )


def released(out: dict[str, pl.DataFrame]) -> list[tuple[str, int]]:
    return out["main"].select("k", "seq").rows()


def reasons(out: dict[str, pl.DataFrame]) -> list[str]:
    return out["dead_letter"]["_reason"].to_list()


def canonical(snapshot: pl.DataFrame) -> pl.DataFrame:
    """A snapshot's rows in a fixed order (state tables keep no particular row order)."""
    return snapshot.sort("_record", "k", "seq", "_partition", nulls_last=True)


def test_in_order_input_passes_through_unchanged() -> None:
    rows = batch(["a", "b", "a", "b"], [1, 7, 2, 8], [0, 1, 2, 3], _offset=[10, 11, 12, 13])
    out = STEP.process(rows, STEP.new_state())
    assert out["main"].equals(rows)
    assert out["dead_letter"].is_empty()


def test_a_held_row_is_released_with_its_run_when_the_gap_fills() -> None:
    state = STEP.new_state()
    first = STEP.process(batch(["a", "a", "a", "b"], [1, 3, 4, 1], [0, 1, 2, 3]), state)
    assert released(first) == [("a", 1), ("b", 1)]
    second = STEP.process(batch(["a", "a"], [2, 5], [4, 5]), state)
    assert released(second) == [("a", 2), ("a", 3), ("a", 4), ("a", 5)]


def test_start_is_the_first_expected_sequence_of_every_key() -> None:
    step = Resequence(key_by=("k",), sequence="seq", event_time="ts", gap_timeout_ms=100, start=0)
    state = step.new_state()
    assert released(step.process(batch(["a", "a"], [2, 1], [0, 1]), state)) == []
    assert released(step.process(batch(["a"], [0], [2]), state)) == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
    ]


def test_without_start_the_first_sequence_seen_is_expected_first() -> None:
    state = STEP.new_state()
    out = STEP.process(batch(["a", "a", "a"], [5, 4, 6], [0, 1, 2]), state)
    assert released(out) == [("a", 5), ("a", 6)]
    assert reasons(out) == [
        "key k=a: sequence 4 is a duplicate or arrived after its gap was given up"
    ]


def test_a_gap_is_given_up_once_event_time_passes_the_timeout() -> None:
    state = STEP.new_state()
    held = STEP.process(batch(["a", "a", "a", "a"], [1, 3, 4, 6], [0, 10, 20, 30]), state)
    assert released(held) == [("a", 1)]
    # ts 109 < 10 + 100: still waiting for 2
    assert released(STEP.process(batch(["b"], [1], [109]), state)) == [("b", 1)]
    # ts 110 reaches 10 + 100: 3 and 4 go out, 6 still waits for 5 (its own timeout is 130)
    assert released(STEP.process(batch(["b"], [2], [110]), state)) == [
        ("a", 3),
        ("a", 4),
        ("b", 2),
    ]
    late = STEP.process(batch(["a", "a"], [2, 5], [111, 112]), state)
    assert released(late) == [("a", 5), ("a", 6)]
    assert reasons(late) == [
        "key k=a: sequence 2 is a duplicate or arrived after its gap was given up"
    ]


def test_event_time_of_another_partition_gives_up_no_gap() -> None:
    state = STEP.new_state()
    STEP.process(batch(["a", "a"], [1, 3], [0, 10]), state)
    other = STEP.process(batch(["b"], [1], [10_000], _partition=[1]), state)
    assert released(other) == [("b", 1)]
    same = STEP.process(batch(["c"], [1], [10_000], _partition=[0]), state)
    assert released(same) == [("a", 3), ("c", 1)]


def test_duplicates_and_null_fields_go_to_the_dead_letters_in_input_order() -> None:
    state = STEP.new_state()
    out = STEP.process(
        batch(
            ["a", "a", "a", "a", "a", "a"],
            [1, 3, 3, None, 1, 2],
            [0, 1, 2, 3, None, 5],
            _offset=[0, 1, 2, 3, 4, 5],
        ),
        state,
    )
    assert released(out) == [("a", 1), ("a", 2), ("a", 3)]
    assert out["dead_letter"].select("_offset", "_reason", "_stage").rows() == [
        (
            2,
            "key k=a: sequence 3 is a duplicate or arrived after its gap was given up",
            "resequence",
        ),
        (3, "field seq is null", "resequence"),
        (4, "field ts is null", "resequence"),
    ]


def test_finish_releases_every_held_row_in_sequence_order() -> None:
    state = STEP.new_state()
    STEP.process(batch(["b", "a", "b", "a", "a"], [1, 1, 4, 5, 3], [0, 1, 2, 3, 4]), state)
    assert released(STEP.finish(state)) == [("a", 3), ("a", 5), ("b", 4)]
    assert STEP.finish(state) == {}
    # positions moved past the released rows: 4 and 5 are now late for a
    after = STEP.process(batch(["a", "a"], [4, 6], [5, 6]), state)
    assert released(after) == [("a", 6)]
    assert reasons(after) == [
        "key k=a: sequence 4 is a duplicate or arrived after its gap was given up"
    ]


def test_keys_may_be_several_and_nested_fields() -> None:
    step = Resequence(
        key_by=("site", "meta.device"), sequence="seq", event_time="ts", gap_timeout_ms=50
    )
    rows = pl.DataFrame(
        {
            "site": ["x", "x", "x", "y"],
            "meta": [{"device": "d"}, {"device": "d"}, {"device": None}, {"device": "d"}],
            "seq": [2, 4, 9, 7],
            "ts": [0, 1, 2, 3],
        }
    )
    state = step.new_state()
    out = step.process(rows, state)
    assert out["main"].select("site", "seq").rows() == [("x", 2), ("x", 9), ("y", 7)]
    late = step.process(rows.slice(1, 1).with_columns(pl.lit(3).alias("seq")), state)
    assert late["main"].select("site", "seq").rows() == [("x", 3), ("x", 4)]


def test_snapshot_is_immutable_and_restores_the_same_continuation() -> None:
    state = STEP.new_state()
    STEP.process(batch(["a", "a", "b"], [1, 3, 1], [0, 1, 2], _partition=[0, 0, 1]), state)
    snapshot = state.snapshot()
    assert snapshot.filter(pl.col("_record") == "held").select("k", "seq").rows() == [("a", 3)]
    assert snapshot.filter(pl.col("_record") == "key").select("k", "_next").sort("k").rows() == [
        ("a", 2),
        ("b", 2),
    ]
    assert snapshot.filter(pl.col("_record") == "partition").select(
        "_partition", "_max_event_time"
    ).sort("_partition").rows() == [(0, 1), (1, 2)]
    frozen = snapshot.clone()

    following = batch(["a", "b"], [2, 2], [5, 6])
    expected = STEP.process(following, state)
    assert snapshot.equals(frozen)
    restored = ResequenceState(("k",))
    restored.restore(snapshot)
    again = STEP.process(following, restored)
    assert again["main"].equals(expected["main"])
    assert canonical(restored.snapshot()).equals(canonical(state.snapshot()))


def test_a_snapshot_before_any_batch_restores_an_empty_state() -> None:
    restored = STEP.new_state()
    restored.restore(STEP.new_state().snapshot())
    assert released(STEP.process(batch(["a"], [4], [0]), restored)) == [("a", 4)]


def test_mistakes_fail_when_the_pipeline_is_built() -> None:
    with pytest.raises(
        msgspec.ValidationError, match=r"Expected `int` >= 1 - at `\$.gap_timeout_ms`"
    ):
        msgspec.convert(
            {
                "op": "resequence",
                "key_by": ["k"],
                "sequence": "s",
                "event_time": "t",
                "gap_timeout_ms": 0,
            },
            Resequence,
        )
    with pytest.raises(ConfigError) as error:
        STEP.check({"k", "seq", "time"})
    assert str(error.value) == (
        "step None (resequence): field 'ts' is not in its input (fields: k, seq, time)"
    )
