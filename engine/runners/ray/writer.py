"""The Ray runner's sink writer: one actor owning every sink of a pipeline.

One writer per sink keeps each output what it is on the local runner: one file, or one
producer per topic whose delivery offsets a checkpoint records and whose resume drops the
records a restarted run produces again. With several workers, they encode values in
parallel, so the writer appends NDJSON bodies as they come (`Lines`) or hands preencoded
values to the producer (Kafka); with one, the writer encodes them on the core the worker
leaves idle.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable

import pyarrow as pa

from engine.connectors import open_sink
from engine.connectors.base import ResumableSink, Sink, SinkPosition, write_together
from engine.connectors.files import NdjsonSink
from engine.errors import CheckpointError
from engine.runners.chain import merged
from engine.runners.ray.loop import BackgroundLoop
from engine.runners.ray.ordering import TicketOrder, in_order
from engine.runners.ray.transfer import Lines, Outputs, unpack
from engine.spec import PipelineSpec


class SinkWriter:
    """The writer actor. Its methods are plain functions (a coroutine method would make
    Ray run the actor as an async one, whose calls interleave); sink I/O runs on a loop
    of its own."""

    def __init__(self, spec: PipelineSpec, import_paths: list[str]) -> None:
        sys.path[:0] = [path for path in import_paths if os.path.isdir(path)]
        self._cpu_at_start = time.process_time_ns()
        self.spec = spec
        self.sinks: dict[str, Sink] = {}
        self.stage_ns: dict[str, int] = defaultdict(int)
        self._written: int | None = None  # the last batch written since `open`
        self.order = TicketOrder()
        self._io = BackgroundLoop()

    def pid(self) -> int:
        return os.getpid()

    def open(self, epoch: int, positions: dict[str, SinkPosition] | None) -> None:
        """(Re)open every sink where a checkpoint's `positions` say its output ends (None: a
        fresh start: files emptied, Kafka topics read to their ends); calls of tickets
        before `epoch` are dropped from now on."""
        self.order.start_epoch(epoch)
        self._io.run(_close(self.sinks))
        self._written = None
        self.sinks = {name: open_sink(spec) for name, spec in self.spec.sinks.items()}
        self._io.run(_open(self.spec.name, self.sinks, positions))

    @in_order
    def write(self, seq: int, outputs: list[Outputs]) -> dict[str, int]:
        """Write batch `seq`'s outputs (one dict per worker, the driver's `Fetch` of the
        workers' results); rows written per sink."""
        if self._written is not None and seq <= self._written:
            raise RuntimeError(f"sink writer: batch {seq} after batch {self._written}")
        self._written = seq
        started = time.perf_counter_ns()
        parts: dict[str, list[pa.Buffer | Lines]] = defaultdict(list)
        for output in outputs:
            for sink, part in output.items():
                parts[sink].append(part)
        writes: list[Awaitable[None]] = []
        rows: dict[str, int] = {}
        for name, sink_parts in parts.items():
            sink = self.sinks[name]
            if isinstance(sink_parts[0], Lines):
                assert isinstance(sink, NdjsonSink)
                lines = [part for part in sink_parts if isinstance(part, Lines)]
                writes.append(sink.append([part.body for part in lines]))
                rows[name] = sum(part.rows for part in lines)
            else:
                frame = merged([unpack(part) for part in sink_parts if isinstance(part, pa.Buffer)])
                writes.append(sink.write(frame))
                rows[name] = frame.height
        self._io.run(write_together(writes))
        self.stage_ns["write"] += time.perf_counter_ns() - started
        return rows

    @in_order
    def positions(self, last_seq: int) -> dict[str, SinkPosition]:
        """The barrier at the sinks, after batch `last_seq`: where each resumable output
        ends, all written so far durable (non-resumable sinks are left out)."""
        if self._written is not None and self._written != last_seq:
            raise RuntimeError(
                f"sink writer: barrier after batch {last_seq}, but batch {self._written} "
                "was the last written"
            )
        return self._io.run(_positions(self.sinks))

    @in_order
    def close(self) -> None:
        sinks, self.sinks = self.sinks, {}
        self._io.run(_close(sinks))

    def stats(self) -> tuple[dict[str, int], int]:
        """Time per stage, and the CPU time of this process since the actor was created
        (its imports excluded), in ns."""
        return dict(self.stage_ns), time.process_time_ns() - self._cpu_at_start


async def _open(
    pipeline: str, sinks: dict[str, Sink], positions: dict[str, SinkPosition] | None
) -> None:
    """Resume or start every sink, side by side (a Kafka sink reads its topic's ends:
    one after another, W1's six took 3 s)."""
    for name, sink in sinks.items():
        if positions is not None and not isinstance(sink, ResumableSink):
            raise CheckpointError(
                f"pipeline {pipeline!r}: sink {name!r} ({type(sink).__name__}) cannot resume "
                "its output after a failure; the Ray runner needs Kafka or NDJSON sinks to "
                "recover"
            )
    found = positions or {}
    await asyncio.gather(*(_open_one(sink, found.get(name)) for name, sink in sinks.items()))


async def _open_one(sink: Sink, position: SinkPosition | None) -> None:
    """Resume a sink at `position` (None: from nothing), or start one that cannot resume
    (only on a fresh start: `_open` refuses the others)."""
    if isinstance(sink, ResumableSink):
        await sink.resume(position)
    else:
        start = getattr(sink, "start", None)
        if start is not None:
            await start()


async def _positions(sinks: dict[str, Sink]) -> dict[str, SinkPosition]:
    resumable = {name: sink for name, sink in sinks.items() if isinstance(sink, ResumableSink)}
    found = await asyncio.gather(*(sink.position() for sink in resumable.values()))
    return dict(zip(resumable, found, strict=True))


async def _close(sinks: dict[str, Sink]) -> None:
    for sink in sinks.values():
        await sink.close()
