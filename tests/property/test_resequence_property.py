"""Resequence matches a naive row-at-a-time reference, however the input is cut into batches."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.operators.resequence import Resequence, ResequenceState


@dataclass(frozen=True)
class Row:
    offset: int
    key: str
    seq: int | None
    ts: int | None
    partition: int


@dataclass
class Reference:
    """The rule, one row at a time, as Resequence's docstring states it."""

    gap: int
    start: int | None

    def __post_init__(self) -> None:
        self.next_expected: dict[str, int] = {}
        self.held: dict[str, dict[int, Row]] = defaultdict(dict)
        self.max_event_time: dict[int, int] = {}

    def push(self, row: Row) -> tuple[list[int], list[tuple[int, str]]]:
        """Released offsets and (offset, reason) dead letters after `row`."""
        if row.seq is None or row.ts is None:
            field = "seq" if row.seq is None else "ts"
            return [], [(row.offset, f"field {field} is null")]
        self.max_event_time[row.partition] = max(
            self.max_event_time.get(row.partition, row.ts), row.ts
        )
        start = self.start if self.start is not None else row.seq
        expected = self.next_expected.setdefault(row.key, start)
        released: list[int] = []
        dead: list[tuple[int, str]] = []
        if row.seq < expected or row.seq in self.held[row.key]:
            reason = (
                f"key k={row.key}: sequence {row.seq} is a duplicate or arrived after "
                "its gap was given up"
            )
            dead.append((row.offset, reason))
        else:
            self.held[row.key][row.seq] = row
            released += self._release_run(row.key)
        for key, held in self.held.items():
            while any(h.ts + self.gap <= self.max_event_time[h.partition] for h in held.values()):
                self.next_expected[key] = min(held)
                released += self._release_run(key)
        return released, dead

    def finish(self) -> list[int]:
        released = []
        for key, held in self.held.items():
            if held:
                self.next_expected[key] = max(held) + 1
            released += [held.pop(seq).offset for seq in sorted(held)]
        return released

    def _release_run(self, key: str) -> list[int]:
        held, expected, out = self.held[key], self.next_expected[key], []
        while expected in held:
            out.append(held.pop(expected).offset)
            expected += 1
        self.next_expected[key] = expected
        return out


@st.composite
def streams(draw: st.DrawFn) -> list[Row]:
    """Per-key sequences with gaps and duplicates, interleaved, displaced a bounded amount."""
    keys = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True))
    items: list[tuple[str, int]] = []
    for key in keys:
        length = draw(st.integers(0, 12))
        for seq in range(length):
            if draw(st.integers(0, 9)) == 0:  # a gap
                continue
            items.extend([(key, seq)] * draw(st.sampled_from([1, 1, 1, 1, 2])))
    order = draw(st.permutations(range(len(items))))
    items = [items[i] for i in order]
    items.sort(key=lambda item: item[1])  # roughly in sequence order, then displaced
    displacement = draw(st.integers(0, 6))
    slots = [i + draw(st.integers(0, displacement)) for i in range(len(items))]
    mixed_partitions = draw(st.booleans())
    key_partition = {key: draw(st.integers(0, 1)) for key in keys}
    rows = []
    for offset, (slot, (key, seq)) in enumerate(
        sorted(zip(slots, items, strict=True), key=lambda p: p[0])
    ):
        partition = draw(st.integers(0, 2)) if mixed_partitions else key_partition[key]
        null = draw(st.integers(0, 40))
        rows.append(
            Row(
                offset=offset,
                key=key,
                seq=None if null == 0 else seq,
                ts=None if null == 1 else slot * 10 + draw(st.integers(0, 9)),
                partition=partition,
            )
        )
    return rows


def frame(rows: list[Row]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "k": [r.key for r in rows],
            "seq": [r.seq for r in rows],
            "ts": [r.ts for r in rows],
            "_partition": [r.partition for r in rows],
            "_offset": [r.offset for r in rows],
        },
        schema={
            "k": pl.String,
            "seq": pl.Int64,
            "ts": pl.Int64,
            "_partition": pl.Int32,
            "_offset": pl.Int64,
        },
    )


@given(
    rows=streams(),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    gap=st.sampled_from([1, 15, 40, 200]),
    start=st.sampled_from([None, 0, 2]),
    restore_at=st.integers(0, 6),
)
@settings(max_examples=120, deadline=None)
def test_matches_reference_for_any_batch_split(
    rows: list[Row], cuts: list[int], gap: int, start: int | None, restore_at: int
) -> None:
    step = Resequence(
        key_by=("k",), sequence="seq", event_time="ts", gap_timeout_ms=gap, start=start
    )
    reference = Reference(gap, start)
    bounds = [0, *sorted(c for c in cuts if c < len(rows)), len(rows)]
    state: ResequenceState = step.new_state()
    by_key: dict[str, list[int]] = defaultdict(list)
    expected_by_key: dict[str, list[int]] = defaultdict(list)
    key_of = {r.offset: r.key for r in rows}
    for index, (low, high) in enumerate(pairwise(bounds)):
        if index == restore_at:  # a checkpoint: continue from a restored copy
            state, snapshot = step.new_state(), state.snapshot()
            state.restore(snapshot)
        expected_released: list[int] = []
        expected_dead: list[tuple[int, str]] = []
        for row in rows[low:high]:
            released, dead = reference.push(row)
            expected_released += released
            expected_dead += dead
        out = step.process(frame(rows[low:high]), state)
        released_offsets = out["main"]["_offset"].to_list()
        assert sorted(released_offsets) == sorted(expected_released)
        assert out["dead_letter"].select("_offset", "_reason").rows() == expected_dead
        for offset in released_offsets:
            by_key[key_of[offset]].append(offset)
        for offset in expected_released:
            expected_by_key[key_of[offset]].append(offset)
    final = step.finish(state).get("main", frame([]))["_offset"].to_list()
    expected_final = reference.finish()
    assert sorted(final) == sorted(expected_final)
    for offset in final:
        by_key[key_of[offset]].append(offset)
    for offset in expected_final:
        expected_by_key[key_of[offset]].append(offset)
    assert by_key == expected_by_key
