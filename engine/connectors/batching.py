"""Batching by size and by time: the bound every streaming source applies.

A batch is flushed when it holds `max_records` records or when `max_wait_ms` has passed since
its first record arrived, whichever comes first. The size bound keeps per-batch costs
amortised under load; the time bound keeps latency low when traffic is light (a lone record
waits at most `max_wait_ms`, never for a batch to fill).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple

import polars as pl

from engine.batch import raw_batch


class Record(NamedTuple):
    """One incoming message: its value and envelope."""

    value: bytes
    key: bytes | None = None
    partition: int = 0


async def batched(
    records: asyncio.Queue[Record | None], max_records: int, max_wait_ms: float
) -> AsyncIterator[list[Record]]:
    """Group records from `records` (None marks the end) into size- and time-bound lists."""
    loop = asyncio.get_running_loop()
    ended = False
    while not ended:
        first = await records.get()
        if first is None:
            return
        batch = [first]
        deadline = loop.time() + max_wait_ms / 1000
        while len(batch) < max_records:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                record = await asyncio.wait_for(records.get(), remaining)
            except TimeoutError:
                break
            if record is None:
                ended = True
                break
            batch.append(record)
        yield batch


class StreamSource:
    """An unbounded in-memory source fed with `put`; `close` ends it.

    For embedding Conflux in an application (and for tests of streaming behaviour): records
    put from any coroutine are batched by `max_records` and `max_wait_ms`.
    """

    def __init__(self, max_records: int = 10_000, max_wait_ms: float = 50.0) -> None:
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue()
        self._offset = 0

    async def put(self, value: bytes, key: bytes | None = None, partition: int = 0) -> None:
        await self._queue.put(Record(value, key, partition))

    async def close(self) -> None:
        await self._queue.put(None)

    async def batches(self) -> AsyncIterator[pl.DataFrame]:
        async for records in batched(self._queue, self.max_records, self.max_wait_ms):
            first = self._offset
            self._offset += len(records)
            yield raw_batch(
                [record.value for record in records],
                keys=[record.key for record in records],
                partitions=[record.partition for record in records],
                offsets=list(range(first, self._offset)),
            )
