"""The Ray runner's sink writer: one actor owning every sink of a pipeline.

One writer per sink keeps each output what it is on the local runner: one file, or one
producer per topic whose delivery offsets a checkpoint records and whose resume drops the
records a restarted run produces again. Workers encode values in parallel (`preencode`), so
the writer mostly appends bytes (NDJSON) or hands them to the producer (Kafka).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict

import polars as pl
import pyarrow as pa

from engine.connectors import open_sink
from engine.connectors.base import ResumableSink, Sink, SinkPosition
from engine.errors import CheckpointError
from engine.runners.chain import merged
from engine.runners.ray.loop import BackgroundLoop
from engine.spec import PipelineSpec


class SinkWriter:
    def __init__(self, spec: PipelineSpec, import_paths: list[str]) -> None:
        sys.path[:0] = [path for path in import_paths if os.path.isdir(path)]
        self.spec = spec
        self.sinks: dict[str, Sink] = {}
        self.stage_ns: dict[str, int] = defaultdict(int)
        self._io = BackgroundLoop()

    def pid(self) -> int:
        return os.getpid()

    def open(self, positions: dict[str, SinkPosition] | None) -> None:
        """(Re)open every sink where a checkpoint's `positions` say its output ends (None: a
        fresh start: files emptied, Kafka topics read to their ends)."""
        self._io.run(self._open(positions))

    async def _open(self, positions: dict[str, SinkPosition] | None) -> None:
        await self._close()
        self.sinks = {name: open_sink(spec) for name, spec in self.spec.sinks.items()}
        for name, sink in self.sinks.items():
            if isinstance(sink, ResumableSink):
                await sink.resume(positions.get(name) if positions is not None else None)
            elif positions is None:
                start = getattr(sink, "start", None)
                if start is not None:
                    await start()
            else:
                raise CheckpointError(
                    f"pipeline {self.spec.name!r}: sink {name!r} ({type(sink).__name__}) "
                    "cannot resume its output after a failure; the Ray runner needs Kafka or "
                    "NDJSON sinks to recover"
                )

    def write(self, *outputs: dict[str, pa.Table]) -> dict[str, int]:
        """Write one batch's outputs (one dict per worker); rows written per sink."""
        started = time.perf_counter_ns()
        tables: dict[str, list[pl.DataFrame]] = defaultdict(list)
        for output in outputs:
            for sink, table in output.items():
                frame = pl.from_arrow(table)
                assert isinstance(frame, pl.DataFrame)
                tables[sink].append(frame)
        frames = {sink: merged(parts) for sink, parts in tables.items()}
        self._io.run(self._write(frames))
        self.stage_ns["write"] += time.perf_counter_ns() - started
        return {sink: frame.height for sink, frame in frames.items()}

    def stats(self) -> dict[str, int]:
        return {**self.stage_ns, "writer cpu": time.process_time_ns()}

    async def _write(self, frames: dict[str, pl.DataFrame]) -> None:
        writes = [asyncio.ensure_future(self.sinks[s].write(f)) for s, f in frames.items()]
        try:
            await asyncio.gather(*writes)
        except BaseException:
            for write in writes:
                write.cancel()
            raise

    def positions(self) -> dict[str, SinkPosition]:
        """The barrier at the sinks: where each resumable output ends, all written so far
        durable (non-resumable sinks are left out)."""
        return self._io.run(self._positions())

    async def _positions(self) -> dict[str, SinkPosition]:
        resumable = {n: s for n, s in self.sinks.items() if isinstance(s, ResumableSink)}
        found = await asyncio.gather(*(sink.position() for sink in resumable.values()))
        return dict(zip(resumable, found, strict=True))

    def close(self) -> None:
        self._io.run(self._close())

    async def _close(self) -> None:
        sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            await sink.close()
