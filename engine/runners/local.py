"""The local runner: executes a plan in this process, one batch at a time, on uvloop.

Each batch from the source runs through the steps in order; a step's main output feeds the
next step, its dead letters and side outputs go to their sinks. At the end of a bounded
input, each step's `finish` outputs flow through the steps after it. The runner owns every
step's state. Deterministic: the same input gives the same outputs, batch split included
(each operator guarantees that its outputs do not depend on where batches are cut).

It also measures where time goes: nanoseconds per input message for reading, for each step
and for writing each sink, which `RunStats.breakdown` reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import uvloop

from engine.connectors.base import Sink, Source
from engine.operators.base import DEAD_LETTER, MAIN, Outputs
from engine.plan import Plan

Progress = Callable[[int], None]


@dataclass
class RunStats:
    """What a run did: messages in, rows per sink, and nanoseconds spent per stage."""

    messages: int = 0
    batches: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    rows_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stage_ns: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def breakdown(self) -> dict[str, float]:
        """Nanoseconds per input message for each stage (read, steps, sink writes)."""
        per = max(self.messages, 1)
        return {stage: ns / per for stage, ns in self.stage_ns.items()}


class LocalRunner:
    """Run `plan` from `source` into `sinks` (sink name → sink) in this process."""

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
        self.states: list[Any] = [step.new_state() for step in plan.steps]
        self.stats = RunStats()

    def run(self) -> RunStats:
        """Run to the end of the source (blocking); returns the run's figures."""
        return uvloop.run(self.run_async())

    async def run_async(self) -> RunStats:
        wall, cpu = time.perf_counter(), time.process_time()
        batches = self.source.batches()
        # optional connector hooks: sinks that create their topics first (Kafka), and
        # sources that commit a batch once its outputs are written (at least once)
        commit = getattr(self.source, "commit", None)
        try:
            for sink in self.sinks.values():
                start = getattr(sink, "start", None)
                if start is not None:
                    await start()
            while True:
                started = time.perf_counter_ns()
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                self.stats.stage_ns["read"] += time.perf_counter_ns() - started
                self.stats.messages += batch.height
                self.stats.batches += 1
                await self._deliver(self._push(0, batch))
                if commit is not None:
                    await commit()
                if self.progress is not None:
                    self.progress(batch.height)
            for index, (step, state) in enumerate(zip(self.plan.steps, self.states, strict=True)):
                await self._deliver(self._follow(index, step.finish(state)))
        finally:
            close = getattr(batches, "aclose", None)
            if close is not None:
                await close()
            for sink in self.sinks.values():
                await sink.close()
        self.stats.wall_seconds = time.perf_counter() - wall
        self.stats.cpu_seconds = time.process_time() - cpu
        return self.stats

    def _push(self, start: int, batch: pl.DataFrame) -> dict[str, list[pl.DataFrame]]:
        """Run `batch` through the steps from `start`; collect what goes to each sink."""
        routed: dict[str, list[pl.DataFrame]] = defaultdict(list)
        current = batch
        for index in range(start, len(self.plan.steps)):
            step = self.plan.steps[index]
            started = time.perf_counter_ns()
            outputs = step.process(current, self.states[index])
            self.stats.stage_ns[str(step.name)] += time.perf_counter_ns() - started
            current = self._collect(outputs, routed)
            if current is None or current.is_empty():
                return routed
        if self.plan.spec.output is not None:
            routed[self.plan.spec.output].append(current)
        return routed

    def _follow(self, index: int, outputs: Outputs) -> dict[str, list[pl.DataFrame]]:
        """Route the end-of-input outputs of step `index`; its main output flows on."""
        routed: dict[str, list[pl.DataFrame]] = defaultdict(list)
        main = self._collect(outputs, routed)
        if main is not None and not main.is_empty():
            if index + 1 < len(self.plan.steps):
                for sink, frames in self._push(index + 1, main).items():
                    routed[sink].extend(frames)
            elif self.plan.spec.output is not None:
                routed[self.plan.spec.output].append(main)
        return routed

    def _collect(
        self, outputs: Outputs, routed: dict[str, list[pl.DataFrame]]
    ) -> pl.DataFrame | None:
        for name, frame in outputs.items():
            if name == MAIN or frame.is_empty():
                continue
            sink = self.plan.spec.dead_letter if name == DEAD_LETTER else name
            routed[sink].append(frame)
        return outputs.get(MAIN)

    async def _deliver(self, routed: dict[str, list[pl.DataFrame]]) -> None:
        for sink_name, frames in routed.items():
            frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
            started = time.perf_counter_ns()
            await self.sinks[sink_name].write(frame)
            self.stats.stage_ns[f"write {sink_name}"] += time.perf_counter_ns() - started
            self.stats.rows_out[sink_name] += frame.height
