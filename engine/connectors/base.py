"""What a runner needs of a source and a sink, and what checkpointing needs besides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import polars as pl

#: Kafka positions: topic → partition → the next offset.
Offsets = dict[str, dict[int, int]]
#: Where a connector is, as a checkpoint keeps it: Kafka offsets, or a file's byte length.
Position = Offsets | int


class Source(Protocol):
    """Yields batches: undecoded (`_raw` + envelope) or already columnar (Parquet)."""

    def batches(self) -> AsyncIterator[pl.DataFrame]: ...


class Sink(Protocol):
    """Receives the batches a pipeline sends it; `close` flushes and releases it."""

    async def write(self, frame: pl.DataFrame) -> None: ...

    async def close(self) -> None: ...


async def write_together(writes: Iterable[Awaitable[None]]) -> None:
    """Run a batch's sink writes concurrently (their broker round trips overlap); when one
    fails, cancel the others and raise: the batch is not delivered, and its offsets are not
    committed."""
    tasks = [asyncio.ensure_future(write) for write in writes]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


@dataclass(frozen=True)
class SinkPosition:
    """Where a sink's output ends, and what it must not write again.

    `unmatched` (Kafka sinks after a restart) holds records already in the topic that the
    resumed run has not produced again yet: columns `partition` (null for a null key),
    `key`, `value` and `count`. None when there are none.
    """

    at: Position
    unmatched: pl.DataFrame | None = None


@runtime_checkable
class ResumableSource(Source, Protocol):
    """A source that can restart from a checkpoint's position (Kafka)."""

    def resume(self, position: Position | None) -> None:
        """Read from `position` (None: from the configured start); before `batches`."""
        ...

    def position(self) -> Position:
        """Where the batches yielded so far end."""
        ...

    async def commit(self, position: Position | None = None) -> None:
        """Tell the source's system that the batches yielded so far (or, given a
        checkpoint's `position`, those before it) are safely done."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ResumableSink(Sink, Protocol):
    """A sink that can cut or filter its output back to a checkpoint (Kafka, NDJSON)."""

    async def resume(self, position: SinkPosition | None) -> None:
        """Continue the output a checkpoint describes (None: a fresh start); before writes."""
        ...

    async def position(self) -> SinkPosition:
        """Make what was written durable and say where it ends."""
        ...
