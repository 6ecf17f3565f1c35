"""Dedup: the idempotent receiver, dropping repeats of an event within an event-time horizon."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import polars as pl

from engine.batch import PARTITION
from engine.operators.base import MAIN, Outputs, Step, column, require_fields

_TS = "__ts"
_KIND = "kind"
_SEEDS = (0x5EED_0001, 0x5EED_0002)
#: How far the id log may outgrow the index before it is compacted (rows).
LOG_SLACK_ROWS = 200_000


class DedupState:
    """Per partition: the largest event time seen, and each id's last emission time.

    The lookup index is numpy arrays sorted by a 128-bit hash of (partition, id): two
    64-bit hashes, so a lookup is a binary search and two ids are confused only if both
    hashes collide (about 2^-128 per pair). Beside it, a log of the emitted ids themselves
    makes snapshots independent of the hash function, so they restore under any version.

    Entries older than their partition's largest event time minus the horizon are evicted
    (they can never cause a drop again, as the largest time only grows): memory is bounded
    by the ids emitted within one horizon.
    """

    def __init__(self, on: tuple[str, ...], horizon_ms: int) -> None:
        self.on = on
        self.horizon_ms = horizon_ms
        self.max_time: dict[int, int] = {}
        self.hashes = np.empty(0, np.uint64)  # sorted
        self.checks = np.empty(0, np.uint64)  # second hash, aligned with `hashes`
        self.times = np.empty(0, np.int64)  # last emission time, aligned
        self.partitions = np.empty(0, np.int32)  # aligned
        self._log: list[pl.DataFrame] = []
        self._log_rows = 0
        self._size_after_eviction = 0

    # ---- lookups and updates --------------------------------------------------------------

    def find(self, hashes: np.ndarray, checks: np.ndarray) -> np.ndarray:
        """Index of each (hash, check) in the index, or -1."""
        positions = np.searchsorted(self.hashes, hashes)
        if not len(self.hashes):
            return np.full(len(hashes), -1, np.int64)
        inside = positions < len(self.hashes)
        clipped = np.where(inside, positions, 0)
        found = inside & (self.hashes[clipped] == hashes) & (self.checks[clipped] == checks)
        # a first-hash collision puts the match after `positions`: look further, rarely
        for row in np.flatnonzero(inside & ~found & (self.hashes[clipped] == hashes)):
            position = positions[row]
            while position < len(self.hashes) and self.hashes[position] == hashes[row]:
                if self.checks[position] == checks[row]:
                    found[row], positions[row] = True, position
                    break
                position += 1
        return np.where(found, positions, -1)

    def record(
        self,
        emitted: pl.DataFrame,
        hashes: np.ndarray,
        checks: np.ndarray,
        times: np.ndarray,
        partitions: np.ndarray,
        where: np.ndarray,
    ) -> None:
        """Make these emissions (one per key, latest) the ones later repeats compare with;
        `where` is each one's index position (`find`), -1 for keys not in the index."""
        known = where >= 0
        self.times[where[known]] = times[known]
        new = ~known
        if new.any():
            order = np.argsort(hashes[new], kind="stable")
            new_hashes = hashes[new][order]
            at = np.searchsorted(self.hashes, new_hashes)
            self.hashes = np.insert(self.hashes, at, new_hashes)
            self.checks = np.insert(self.checks, at, checks[new][order])
            self.times = np.insert(self.times, at, times[new][order])
            self.partitions = np.insert(self.partitions, at, partitions[new][order])
        self._log.append(emitted)
        self._log_rows += emitted.height
        # Evict when the index has doubled since the last eviction: amortised O(1) per entry.
        if len(self.hashes) > 2 * self._size_after_eviction + 16_384:
            self._evict()

    def _evict(self) -> None:
        floor = np.full(len(self.partitions), np.iinfo(np.int64).min, np.int64)
        for partition, latest in self.max_time.items():
            floor[self.partitions == partition] = latest - self.horizon_ms
        keep = self.times >= floor
        self.hashes, self.checks = self.hashes[keep], self.checks[keep]
        self.times, self.partitions = self.times[keep], self.partitions[keep]
        self._size_after_eviction = len(self.hashes)
        if self._log_rows > 4 * len(self.hashes) + LOG_SLACK_ROWS:
            self._log = [self._emitted_within_horizon()]
            self._log_rows = self._log[0].height

    # ---- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> pl.DataFrame:
        """Emitted ids still within the horizon with their time, plus one row per partition
        holding its largest event time (its id columns null)."""
        # `kind` tells the rows apart: an emitted id may itself be null
        return pl.concat(
            [
                self._emitted_within_horizon().with_columns(pl.lit("emitted").alias(_KIND)),
                self._maxima().select(
                    PARTITION, pl.col("max_time").alias(_TS), pl.lit("max").alias(_KIND)
                ),
            ],
            how="diagonal_relaxed",
        )

    def _maxima(self) -> pl.DataFrame:
        return pl.DataFrame(
            {PARTITION: list(self.max_time), "max_time": list(self.max_time.values())},
            schema={PARTITION: pl.Int32, "max_time": pl.Int64},
        )

    def _emitted_within_horizon(self) -> pl.DataFrame:
        """The log reduced to each id's last emission, dropping those past the horizon."""
        emitted = (
            pl.concat(self._log)
            if self._log
            else pl.DataFrame(
                schema={PARTITION: pl.Int32, **dict.fromkeys(self.on, pl.String), _TS: pl.Int64}
            )
        )
        return (
            emitted.unique(subset=[PARTITION, *self.on], keep="last", maintain_order=True)
            .join(self._maxima(), on=PARTITION, how="left")
            .filter(pl.col(_TS) >= pl.col("max_time") - self.horizon_ms)
            .drop("max_time")
        )

    def restore(self, table: pl.DataFrame) -> None:
        if _KIND in table.columns:
            is_max = table[_KIND] == "max"
            table = table.drop(_KIND)
        else:  # a snapshot from before `kind`
            ids_null = pl.all_horizontal(pl.col(name).is_null() for name in self.on)
            is_max = table.select(ids_null).to_series()
        fresh = DedupState(self.on, self.horizon_ms)
        fresh.max_time = dict(table.filter(is_max).select(PARTITION, _TS).iter_rows())
        emitted = table.filter(~is_max)
        hashes, checks = _hashes(emitted, self.on)
        fresh.record(
            emitted,
            hashes,
            checks,
            emitted[_TS].to_numpy(),
            emitted[PARTITION].to_numpy(),
            np.full(emitted.height, -1),
        )
        self.__dict__.update(fresh.__dict__)


def _hashes(rows: pl.DataFrame, on: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of (partition, *on) per row."""
    identity = pl.struct(PARTITION, *on)
    hashed = rows.select(*(identity.hash(seed).alias(str(seed)) for seed in _SEEDS))
    return hashed[:, 0].to_numpy(), hashed[:, 1].to_numpy()


class Dedup(Step, tag="dedup"):
    """Drop an event whose id was already emitted on its partition within the horizon.

    An event whose `on` fields are null cannot be identified: it always passes.

    Exactly: an event is dropped when an event with the same `on` values was already
    emitted on its partition and that event's time is ≥ (the largest event time seen by
    this step on that partition, this event included) − `horizon_ms`. An emitted event
    becomes the one later repeats are compared with. This is W1's rule, and makes
    redeliveries of at-least-once sources idempotent.

    Cost: a binary search per event in an index of the ids emitted within the horizon
    (memory bounded by them); ids repeated inside one batch, the rare case, are resolved
    in order one by one. Order of kept rows is preserved.

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
        partitions = rows[PARTITION].to_numpy()
        times = rows[_TS].to_numpy()
        running_max = self._running_max(partitions, times, state)
        hashes, checks = _hashes(rows, self.on)
        _, group, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        repeated = counts[group] > 1
        previous = state.find(hashes, checks)
        previous_time = np.full(len(previous), np.iinfo(np.int64).min, np.int64)
        previous_time[previous >= 0] = state.times[previous[previous >= 0]]
        keep = ~((previous >= 0) & (previous_time >= running_max - self.horizon_ms))
        superseded: list[int] = []
        if repeated.any():
            superseded = self._resolve_repeats(
                np.flatnonzero(repeated), keep, hashes, checks, times, running_max, previous_time
            )
        # an event with a null id cannot be identified: it passes, and is not remembered
        forgotten = superseded
        if any(rows[name].null_count() for name in self.on):
            unidentified = pl.any_horizontal(pl.col(self.on).is_null())
            unknown = rows.select(unidentified).to_series().to_numpy()
            keep[unknown] = True
            forgotten = [*superseded, *np.flatnonzero(unknown).tolist()]
        kept = np.flatnonzero(keep)
        # the last emission per key is the one later repeats compare with
        remembered = kept
        if forgotten:
            remember = keep.copy()
            remember[forgotten] = False
            remembered = np.flatnonzero(remember)
        state.record(
            rows[remembered],
            hashes[remembered],
            checks[remembered],
            times[remembered],
            partitions[remembered],
            previous[remembered],
        )
        return {MAIN: batch if len(kept) == batch.height else batch[kept]}

    def _running_max(
        self, partitions: np.ndarray, times: np.ndarray, state: DedupState
    ) -> np.ndarray:
        """Per row, the largest event time of its partition so far, this row included."""
        running = np.empty_like(times)
        for partition in np.unique(partitions).tolist():
            rows = partitions == partition
            seen = np.maximum.accumulate(times[rows])
            before = state.max_time.get(partition)
            if before is not None:
                seen = np.maximum(seen, before)
            running[rows] = seen
            state.max_time[partition] = int(seen[-1])
        return running

    def _resolve_repeats(
        self,
        rows: np.ndarray,
        keep: np.ndarray,
        hashes: np.ndarray,
        checks: np.ndarray,
        times: np.ndarray,
        running_max: np.ndarray,
        previous_time: np.ndarray,
    ) -> list[int]:
        """Decide ids occurring more than once in the batch, in order: each occurrence is
        compared with the last emitted one (earlier in the batch, or from the state).

        Returns the emitted rows that a later emission of the same id supersedes.
        """
        last_emitted: dict[tuple[int, int], tuple[int, int]] = {}  # key → (time, row)
        superseded: list[int] = []
        floor = np.iinfo(np.int64).min
        for row in rows.tolist():
            key = (int(hashes[row]), int(checks[row]))
            emitted_here = last_emitted.get(key)
            before = emitted_here[0] if emitted_here else int(previous_time[row])
            if before != floor and before >= running_max[row] - self.horizon_ms:
                keep[row] = False
            else:
                keep[row] = True
                if emitted_here:
                    superseded.append(emitted_here[1])
                last_emitted[key] = (int(times[row]), row)
        return superseded
