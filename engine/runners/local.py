"""The local runner: executes a plan in this process, one batch at a time, on uvloop.

Each batch from the source runs through the steps in order (`engine.runners.chain`); a
step's main output feeds the next step, its dead letters and side outputs go to their sinks.
At the end of a bounded input, each step's `finish` outputs flow through the steps after it.
The runner owns every step's state. Deterministic: the same input gives the same outputs,
batch split included (each operator guarantees that its outputs do not depend on where
batches are cut).

With a checkpoint (`PipelineSpec.checkpoint`) the effects of a run are exactly once: a
run killed at any point and started again with the same directory writes every output
once and loses none. The runner restores each stateful step's state from the last
checkpoint, places the source at the checkpoint's offsets, cuts NDJSON sinks back to the
checkpoint's length and has Kafka sinks drop the outputs they had already written after it
(`engine.runners.checkpoint`, `KafkaSink.resume`). A checkpoint is written once a batch's
outputs are acknowledged and `interval_ms` has passed since the last one, and at the end
of a bounded input; the source's offsets are committed to its system only after that, so
they never run ahead of a checkpoint. Between batches the runner only takes the sinks'
positions and the states' snapshots; the files are written and fsynced, and the offsets
committed, in the background while the next batches run (as Flink's asynchronous
snapshots), one checkpoint at a time: writing them in line held every batch behind a
checkpoint ~12 ms on the project's machine (benchmarks/RESULTS.md). Without a
checkpoint, the source commits after every batch: at least once, and a rerun starts with
empty state.

It also measures where time goes: nanoseconds per input message for reading, for each step,
for writing each sink and for checkpointing, which `RunStats.breakdown` reports.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import polars as pl
import uvloop

from engine.connectors.base import (
    Position,
    ResumableSink,
    ResumableSource,
    Sink,
    SinkPosition,
    Source,
    write_together,
)
from engine.errors import CheckpointError
from engine.plan import Plan
from engine.runners.chain import Routed, StepChain, merged
from engine.runners.checkpoint import Checkpoint, CheckpointStore

Progress = Callable[[int], None]


@dataclass
class RunStats:
    """What a run did: messages in, rows per sink, checkpoints written, and nanoseconds
    spent per stage; on Ray, also the actors' CPU nanoseconds by role ("worker", "writer";
    their imports excluded)."""

    messages: int = 0
    batches: int = 0
    checkpoints: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    last_batch_at: float = 0.0  # Unix time the last batch was done (its outputs written)
    rows_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stage_ns: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    actor_cpu_ns: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def breakdown(self) -> dict[str, float]:
        """Nanoseconds per input message for each stage (read, steps, sink writes)."""
        per = max(self.messages, 1)
        return {stage: ns / per for stage, ns in self.stage_ns.items()}


@dataclass(frozen=True)
class _Checkpointing:
    """A run's checkpoint store, and its source and sinks seen as resumable."""

    store: CheckpointStore
    source: ResumableSource
    sinks: dict[str, ResumableSink]
    interval_s: float


class LocalRunner:
    """Run `plan` from `source` into `sinks` (sink name → sink) in this process.

    With `plan.spec.checkpoint`, the source must be resumable (`ResumableSource`: Kafka)
    and so must every sink (`ResumableSink`: Kafka, NDJSON); `run` raises CheckpointError
    naming the one that is not before anything is read.
    """

    def __init__(
        self,
        plan: Plan,
        source: Source,
        sinks: Mapping[str, Sink],
        progress: Progress | None = None,
    ) -> None:
        self.plan = plan
        self.source = source
        self.sinks = dict(sinks)
        self.progress = progress
        self.stats = RunStats()
        self._saving: asyncio.Task[None] | None = None  # the checkpoint being saved
        self.chain = StepChain(
            plan.steps,
            dead_letter=plan.spec.dead_letter,
            output=plan.spec.output,
            stage_ns=self.stats.stage_ns,
        )

    def run(self) -> RunStats:
        """Run to the end of the source (blocking); returns the run's figures."""
        return uvloop.run(self.run_async())

    async def run_async(self) -> RunStats:
        wall, cpu = time.perf_counter(), time.process_time()
        batches = self.source.batches()
        checkpointing = self._checkpointing()
        # optional connector hooks: sinks that create their topics first (Kafka), and
        # sources that commit a batch once its outputs are written (at least once)
        commit = getattr(self.source, "commit", None)
        try:
            if checkpointing is not None:
                await self._resume(checkpointing)
            for sink in self.sinks.values():
                start = getattr(sink, "start", None)
                if start is not None:
                    await start()
            checkpointed_at = time.monotonic()
            while True:
                if self._saving is not None and self._saving.done():
                    await self._saved()  # raises what went wrong in the background
                started = time.perf_counter_ns()
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                self.stats.stage_ns["read"] += time.perf_counter_ns() - started
                self.stats.messages += batch.height
                self.stats.batches += 1
                await self._deliver(self.chain.push(batch)[0])
                if checkpointing is None:
                    if commit is not None:
                        await commit()
                elif (
                    time.monotonic() - checkpointed_at >= checkpointing.interval_s
                    and self._saving is None
                ):
                    await self._checkpoint(checkpointing)
                    checkpointed_at = time.monotonic()
                self.stats.last_batch_at = time.time()
                if self.progress is not None:
                    self.progress(batch.height)
            await self._deliver(self.chain.finish()[0])
            if checkpointing is not None:
                await self._saved()
                await self._checkpoint(checkpointing)
                await self._saved()
        finally:
            if self._saving is not None:
                # the run failed while a checkpoint was saved: let it finish (its outputs
                # were acknowledged), the run's own error being the one raised
                await asyncio.wait([self._saving])
                if not self._saving.cancelled():
                    self._saving.exception()
            close = getattr(batches, "aclose", None)
            if close is not None:
                await close()
            if checkpointing is not None:
                # a resumed source stays connected after its batches, for the last commit
                await checkpointing.source.close()
            for sink in self.sinks.values():
                await sink.close()
        self.stats.wall_seconds = time.perf_counter() - wall
        self.stats.cpu_seconds = time.process_time() - cpu
        return self.stats

    def _checkpointing(self) -> _Checkpointing | None:
        """What checkpoints need, once the source and sinks are known to support them;
        None when the plan has no checkpoint."""
        spec = self.plan.spec.checkpoint
        if spec is None:
            return None
        if not isinstance(self.source, ResumableSource):
            raise CheckpointError(
                f"pipeline {self.plan.spec.name!r}: checkpoint: the source "
                f"({type(self.source).__name__}) cannot resume from a position; "
                "checkpoints need a Kafka source"
            )
        sinks: dict[str, ResumableSink] = {}
        for name, sink in self.sinks.items():
            if not isinstance(sink, ResumableSink):
                raise CheckpointError(
                    f"pipeline {self.plan.spec.name!r}: checkpoint: sink {name!r} "
                    f"({type(sink).__name__}) cannot resume its output; checkpoints need "
                    "Kafka or NDJSON sinks"
                )
            sinks[name] = sink
        return _Checkpointing(
            CheckpointStore(spec.directory), self.source, sinks, spec.interval_ms / 1000
        )

    async def _resume(self, checkpointing: _Checkpointing) -> None:
        """Continue from the last checkpoint, or write the first one: where each sink's
        output begins, so that even a run killed before its second checkpoint resumes."""
        checkpoint = checkpointing.store.load()
        if checkpoint is not None:
            self._restore_states(checkpoint, checkpointing.store)
        checkpointing.source.resume(checkpoint.source if checkpoint else None)
        await asyncio.gather(
            *(
                sink.resume(checkpoint.sinks.get(name) if checkpoint else None)
                for name, sink in checkpointing.sinks.items()
            )
        )
        if checkpoint is None:
            await self._checkpoint(checkpointing)
            await self._saved()

    def _restore_states(self, checkpoint: Checkpoint, store: CheckpointStore) -> None:
        stateful = {str(step.name): state for step, state in self.chain.stateful()}
        if stateful.keys() != checkpoint.states.keys():
            raise CheckpointError(
                f"checkpoint {checkpoint.number} in {str(store.directory)!r} holds the "
                f"state of steps {sorted(checkpoint.states)}, but pipeline "
                f"{self.plan.spec.name!r} has stateful steps {sorted(stateful)}: its steps "
                "changed since; start again with an empty checkpoint directory"
            )
        for name, state in stateful.items():
            state.restore(checkpoint.states[name])

    async def _checkpoint(self, checkpointing: _Checkpointing) -> None:
        """Take a checkpoint of the batches delivered so far; `_save` makes it durable
        and commits the source in the background (`_saved` waits for it).

        Called between batches, with no checkpoint being saved: every output is
        acknowledged and no batch is being read, so positions and states describe the same
        point of the input. The snapshots are copies, so the next batches may change the
        states while they are written.
        """
        started = time.perf_counter_ns()
        names = list(checkpointing.sinks)
        positions = await asyncio.gather(
            *(sink.position() for sink in checkpointing.sinks.values())
        )
        states = {str(step.name): state.snapshot() for step, state in self.chain.stateful()}
        source = checkpointing.source.position()
        sinks = dict(zip(names, positions, strict=True))
        self._saving = asyncio.create_task(self._save(checkpointing, source, sinks, states))
        self.stats.stage_ns["checkpoint"] += time.perf_counter_ns() - started

    async def _save(
        self,
        checkpointing: _Checkpointing,
        source: Position,
        sinks: dict[str, SinkPosition],
        states: dict[str, pl.DataFrame],
    ) -> None:
        """Write a checkpoint's files (in a thread: fsync blocks), then commit the source's
        offsets it holds: they never run ahead of a durable checkpoint."""
        started = time.perf_counter_ns()
        await asyncio.to_thread(checkpointing.store.save, source, sinks, states)
        await checkpointing.source.commit(source)
        self.stats.checkpoints += 1
        self.stats.stage_ns["checkpoint save"] += time.perf_counter_ns() - started

    async def _saved(self) -> None:
        """Wait until the checkpoint being saved, if any, is durable and committed; raise
        what failed if it did not."""
        saving, self._saving = self._saving, None
        if saving is not None:
            await saving

    async def _deliver(self, routed: Routed) -> None:
        """Write each sink's rows; sinks write concurrently, so their broker round trips
        overlap (encoding is CPU work and runs one sink at a time either way)."""

        async def deliver(sink_name: str, frames: list[pl.DataFrame]) -> None:
            frame = merged(frames)
            started = time.perf_counter_ns()
            await self.sinks[sink_name].write(frame)
            self.stats.stage_ns[f"write {sink_name}"] += time.perf_counter_ns() - started
            self.stats.rows_out[sink_name] += frame.height

        await write_together(deliver(name, frames) for name, frames in routed.items())
