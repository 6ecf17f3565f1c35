"""One Kafka producer shared by every sink of a process that writes with the same settings.

Why: a pipeline writes a batch's outputs to all its sinks at once (W1: six topics). With a
producer per sink, each write is a produce request of its own, on a connection of its own,
each with its own sender task, request and response: on the project's 2-core machine that
cost ~1 ms of client CPU per sink per batch, and the broker (Tansu) takes the requests one
after another (six 1,000-row writes acknowledged in 18.6 ms where one write of all their
partitions takes 6.3 ms). Sinks sharing a producer append their record batches to one
accumulator in the same turn of the event loop, and its sender sends them as one request.

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
