"""What one worker actor of the Ray runner does: its partitions' steps and state.

A plan is cut in two chains (`split_plan`): the *head*, the stateless steps before the first
stateful one, which may run on any worker; and the *tail*, from the first stateful step on,
which must see every row of a partition, in order, in one place. Rows are partitioned by
`_partition` (Kafka's partition, or the one a `key_by` step assigns); partition `p` is owned
by worker `p % workers`. A worker:

- `head`: reads a split (a file's lines, a row group), runs the head chain and cuts its
  main output into one piece per owner (the shuffle); its own piece stays here;
- `tail`: runs the tail chain on its piece of a batch and returns the batch's sink outputs
  for the sink writer (encoded here when there are several workers, `_encode`);
- `process`: both in one call, when no shuffle is needed (one worker);
- `poll`: the same over its own Kafka partitions (manual assignment; no shuffle, since a
  Kafka partition is already a partition of the state, unless the head has a `key_by`);
- `snapshot`: at a checkpoint barrier, writes its state per partition to the store;
- `configure`: takes an assignment and restores its partitions' state from a checkpoint
  (at start, after a failure, after a rescale).

Calls that touch state or sources run in the order the driver numbered them
(`engine.runners.ray.ordering`): that order is what makes a `snapshot` call an aligned
barrier. `configure` starts the numbering again.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from engine.batch import PARTITION
from engine.connectors import kafka_source
from engine.connectors.encoding import encode_lines, preencode
from engine.connectors.kafka import KafkaSource
from engine.errors import CheckpointError
from engine.operators.base import Step
from engine.operators.key_by import KeyBy
from engine.plan import Plan, build_plan
from engine.runners.chain import Routed, StepChain, merged
from engine.runners.ray.loop import BackgroundLoop
from engine.runners.ray.ordering import TicketOrder, in_order
from engine.runners.ray.splits import Split
from engine.runners.ray.store import Manifest, RayCheckpointStore, StateFiles
from engine.runners.ray.transfer import Lines, Outputs, pack, unpack
from engine.spec import FileSinkSpec, KafkaSourceSpec, PipelineSpec


def split_plan(plan: Plan) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """The head (leading stateless steps) and the tail (the rest) of a plan."""
    first_stateful = next(
        (index for index, step in enumerate(plan.steps) if step.stateful), len(plan.steps)
    )
    return plan.steps[:first_stateful], plan.steps[first_stateful:]


def shuffles(plan: Plan) -> bool:
    """Whether rows must move between workers after the head: a `key_by` in the head gives
    them new partitions. Without one, rows keep their source partition (Kafka's)."""
    head, _ = split_plan(plan)
    return any(isinstance(step, KeyBy) for step in head)


class Worker:
    """One worker actor's steps, states and source; see the module docstring."""

    def __init__(self, spec: PipelineSpec, import_paths: list[str]) -> None:
        # a pipeline's schemas are imported by module path, as on the driver
        sys.path[:0] = [path for path in import_paths if os.path.isdir(path)]
        self._cpu_at_start = time.process_time_ns()
        self.spec = spec
        self.plan = build_plan(spec)
        self.head_steps, self.tail_steps = split_plan(self.plan)
        self.stage_ns: dict[str, int] = defaultdict(int)
        self.unencoded = {
            name
            for name, sink in spec.sinks.items()
            if isinstance(sink, FileSinkSpec) and sink.format == "parquet"
        }
        self.lines = {
            name
            for name, sink in spec.sinks.items()
            if isinstance(sink, FileSinkSpec) and sink.format == "ndjson"
        }
        self.index, self.workers, self.owned = 0, 1, ()
        self.head = StepChain(
            self.head_steps, dead_letter=spec.dead_letter, output=None, stage_ns=self.stage_ns
        )
        self.tail = self._new_tail()
        self.store: RayCheckpointStore | None = None
        self.source: KafkaSource | None = None
        self._io: BackgroundLoop | None = None
        self._stash: dict[int, tuple[pl.DataFrame | None, Routed]] = {}
        self.order = TicketOrder()

    def pid(self) -> int:
        return os.getpid()

    def lag(self) -> dict[int, int]:
        """This worker's Kafka partitions' lag (`KafkaSource.lag`; none for other sources).
        Not in ticket order: a metrics scrape reads it while batches run."""
        source = self.source
        return source.lag() if source is not None else {}

    # ---- assignment and state -------------------------------------------------------------

    def configure(
        self,
        epoch: int,
        index: int,
        workers: int,
        partitions: int,
        store: str,
        manifest: Manifest | None,
    ) -> None:
        """Own partitions `p % workers == index` of `partitions`, with their state from
        `manifest` (None: empty state, source from its configured start); calls of
        tickets before `epoch` are dropped from now on."""
        self.order.start_epoch(epoch)
        self.index, self.workers = index, workers
        self.owned = tuple(p for p in range(partitions) if p % workers == index)
        self.store = RayCheckpointStore(store)
        self.tail = self._new_tail()
        self._stash.clear()
        if manifest is not None:
            self._restore(manifest)
        if isinstance(self.spec.source, KafkaSourceSpec):
            self._open_source(manifest)

    def _new_tail(self) -> StepChain:
        return StepChain(
            self.tail_steps,
            dead_letter=self.spec.dead_letter,
            output=self.spec.output,
            stage_ns=self.stage_ns,
        )

    def _restore(self, manifest: Manifest) -> None:
        assert self.store is not None
        for step, state in self.tail.stateful():
            files = manifest.states.get(str(step.name))
            if files is None:
                raise CheckpointError(
                    f"checkpoint {manifest.number} in {self.store.location!r} has no state for "
                    f"step {step.name!r}: the pipeline's steps changed since; start again with "
                    "an empty checkpoint directory"
                )
            if files.workers and manifest.workers != self.workers:
                raise CheckpointError(
                    f"step {step.name!r} keeps state not tied to a partition, so checkpoint "
                    f"{manifest.number} (taken with {manifest.workers} workers) cannot be "
                    f"restored onto {self.workers}; run it with {manifest.workers} workers"
                )
            table = self.store.read_state(files, self.owned, self.index)
            if table.width:
                state.restore(table)

    def _open_source(self, manifest: Manifest | None) -> None:
        spec = self.spec.source
        assert isinstance(spec, KafkaSourceSpec)
        if self._io is None:
            self._io = BackgroundLoop()
        if self.source is not None:
            self._io.run(self.source.close())
        self.source = kafka_source(spec, partitions=self.owned)
        self.source.resume(manifest.offsets if manifest is not None else None)

    @in_order
    def snapshot(self, number: int) -> tuple[dict[str, StateFiles], dict[int, int]]:
        """The barrier: write this worker's state for checkpoint `number`; return where it
        is and the next offset of each Kafka partition it owns."""
        assert self.store is not None
        files = {
            str(step.name): self.store.write_state(
                number, str(step.name), state.snapshot(), self.owned, self.index
            )
            for step, state in self.tail.stateful()
        }
        offsets: dict[int, int] = {}
        if self.source is not None:
            read = self.source.position().get(self.source.topic, {})
            offsets = {p: o for p, o in read.items() if p in self.owned}
        return files, offsets

    @in_order
    def commit(self, offsets: dict[str, dict[int, int]]) -> None:
        """Commit a completed checkpoint's offsets of this worker's partitions."""
        if self.source is not None and self._io is not None:
            self._io.run(self.source.commit(offsets))

    # ---- batches ------------------------------------------------------------------------

    @in_order
    def head_split(self, seq: int, split: Split) -> list[Any]:
        """Read and run the head on `split`: one piece per owner (this worker's stays
        here, for its `tail(seq)`), then the number of input messages."""
        batch = self._read(split)
        return self._shuffle(seq, batch)

    @in_order
    def tail_piece(self, seq: int, piece: list[pa.Buffer | None]) -> Outputs:
        """Run the tail on this worker's rows of batch `seq`; the batch's sink outputs.

        `piece`: the other worker's rows for this one (None: this worker's own, kept
        here), as the driver's `Fetch` of the head's result.
        """
        packed = piece[0]
        own, routed = self._stash.pop(seq, (None, defaultdict(list)))
        rows = own if packed is None else unpack(packed)
        assert rows is None or isinstance(rows, pl.DataFrame)
        if rows is not None and rows.height:
            more, _ = self.tail.push(rows)
            for sink, frames in more.items():
                routed[sink].extend(frames)
        return self._encode(routed)

    @in_order
    def process(self, split: Split) -> list[Any]:
        """Head and tail in one call (one worker owns every partition): outputs, count."""
        batch = self._read(split)
        return [self._whole(batch), batch.height]

    @in_order
    def poll(self, seq: int, shuffle: bool) -> list[Any]:
        """Fetch from this worker's Kafka partitions (waiting up to the source's linger).

        Without a shuffle: [outputs, count]. With one: like `head_split`.
        """
        assert self.source is not None and self._io is not None
        batch = self._io.run(self.source.fetch())
        if batch is None:
            return [{}, 0] if not shuffle else [*([None] * self.workers), 0]
        if not shuffle:
            return [self._whole(batch), batch.height]
        return self._shuffle(seq, batch)

    @in_order
    def finish(self) -> Outputs:
        """End of a bounded input: what each step emits then."""
        routed, _ = self.tail.finish()
        return self._encode(routed)

    def stats(self) -> tuple[dict[str, int], int]:
        """Time per stage, and the CPU time of this process since the actor was created
        (its imports excluded), in ns."""
        return dict(self.stage_ns), time.process_time_ns() - self._cpu_at_start

    @in_order
    def close(self) -> None:
        if self.source is not None and self._io is not None:
            self._io.run(self.source.close())
            self.source = None

    # ---- helpers ------------------------------------------------------------------------

    def _read(self, split: Split) -> pl.DataFrame:
        started = time.perf_counter_ns()
        batch = split.read()
        self.stage_ns["read"] += time.perf_counter_ns() - started
        return batch

    def _whole(self, batch: pl.DataFrame) -> Outputs:
        routed, main = self.head.push(batch)
        if main is not None and main.height:
            more, _ = self.tail.push(main)
            for sink, frames in more.items():
                routed[sink].extend(frames)
        return self._encode(routed)

    def _shuffle(self, seq: int, batch: pl.DataFrame) -> list[Any]:
        """Run the head on `batch` and cut its main output by owner: this worker's piece
        and the side outputs stay here for its `tail_piece(seq)`; the others are returned
        packed (None: no rows), then the number of input messages."""
        routed, main = self.head.push(batch)
        pieces = self._pieces(main)
        self._stash[seq] = (pieces[self.index], routed)
        pieces[self.index] = None
        return [*(None if p is None else pack(p) for p in pieces), batch.height]

    def _pieces(self, main: pl.DataFrame | None) -> list[pl.DataFrame | None]:
        """`main`'s rows by owning worker, each in its order."""
        if main is None or main.is_empty():
            return [None] * self.workers
        if self.workers == 1:
            return [main]
        owners = main.get_column(PARTITION).fill_null(0).to_numpy() % self.workers
        return [main[np.flatnonzero(owners == owner)] for owner in range(self.workers)]

    def _encode(self, routed: Routed) -> Outputs:
        """Each sink's rows in one frame, or one NDJSON body. With several workers, values
        are encoded here, in parallel, so that the one sink writer does not become the
        bottleneck: an NDJSON sink's as the lines the writer appends, a Kafka sink's with the
        envelope it produces them with. With one worker, the writer encodes them, on the
        core the worker leaves idle. Sinks that store columns (Parquet) get columns."""
        started = time.perf_counter_ns()
        outputs: Outputs = {}
        for sink, frames in routed.items():
            frame = merged(frames)
            if not frame.height:
                continue
            if self.workers == 1 or sink in self.unencoded:
                outputs[sink] = pack(frame)
            elif sink in self.lines:
                outputs[sink] = Lines(encode_lines(frame), frame.height)
            else:
                outputs[sink] = pack(preencode(frame))
        self.stage_ns["outputs"] += time.perf_counter_ns() - started
        return outputs
