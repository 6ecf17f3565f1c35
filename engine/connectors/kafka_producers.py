"""One Kafka producer shared by every sink of a process that writes with the same settings.

Why: a pipeline writes a batch's outputs to all its sinks at once (W1: six topics). With a
producer per sink, each write was a produce request of its own, on a connection of its own,
with a sender task of its own. Sinks sharing a producer append their record batches to one
accumulator in the same turn of the event loop, and its sender sends them as one request:
one connection and one request per broker instead of one per sink, as the Java client's
advice to share one producer per process gives. Measured on W1's latency run (interleaved
A/B, 2 runs each, benchmarks/RESULTS.md): p50 68-69 ms shared against 68-78 ms not, within
this machine's noise; the gain is in connections and requests, not yet in latency.

Producers are tied to the event loop they were started in, so they are shared per loop
and per settings (`ProducerSettings`); the last sink to let go of one stops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class ProducerSettings:
    """What makes two sinks' producers interchangeable."""

    bootstrap: str
    acks: str | int
    compression: str | None
    max_batch_size: int
    request_timeout_ms: int


@dataclass
class _Shared:
    started: asyncio.Task[AIOKafkaProducer]
    users: int = 0


_shared: dict[tuple[asyncio.AbstractEventLoop, ProducerSettings], _Shared] = {}


async def acquire(
    settings: ProducerSettings, start: Callable[[], Awaitable[AIOKafkaProducer]]
) -> AIOKafkaProducer:
    """The producer this loop shares for `settings`, started by `start` when none is;
    each acquire is matched by one `release`. Raises what `start` raises (and the next
    acquire tries again)."""
    key = (asyncio.get_running_loop(), settings)
    shared = _shared.get(key)
    if shared is None:
        shared = _shared[key] = _Shared(asyncio.ensure_future(start()))
    shared.users += 1
    try:
        return await asyncio.shield(shared.started)
    except BaseException:
        await release(settings)
        raise


async def release(settings: ProducerSettings) -> None:
    """Let go of the producer `acquire` gave; the last user stops it."""
    key = (asyncio.get_running_loop(), settings)
    shared = _shared[key]
    shared.users -= 1
    if shared.users:
        return
    del _shared[key]
    if not shared.started.done():
        shared.started.cancel()
        return
    if shared.started.cancelled() or shared.started.exception() is not None:
        return
    await shared.started.result().stop()
