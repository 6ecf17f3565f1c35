"""Fetched Kafka records as one raw batch, read by native code instead of record by record.

aiokafka's `getmany` builds two Python objects per record (its record, then a
`ConsumerRecord`), which the source then took apart into Arrow columns: ~2 µs a message, a
third of W1's Kafka form. `fetch` drains the same buffered fetch results that `getmany`
does, with the same checks (assignment, position, errors, waking the fetch routine), but
reads each partition's fetched bytes in one native pass (`engine/native/records.c`). A batch
whose CRC or lengths are wrong raises aiokafka's `CorruptRecordException`, naming the topic,
partition and offset, as `getmany` would; the partition's position does not move.

For that the fetched bytes must be kept: aiokafka's fetcher wraps them in its `MemoryRecords`,
which keeps them out of reach, so its module's `MemoryRecords` is replaced by `RawRecords`,
which delegates every call to it and keeps the bytes. A record set the native reader does
not take (compressed, with headers, an old format) is drained through aiokafka's own records,
as `getmany` would. Written against aiokafka 0.11–0.14 (pinned in pyproject.toml); the
Kafka integration tests run through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException

from engine import _native
from engine.batch import (
    HEADER_ARROW_TYPE,
    HEADERS,
    KEY,
    OFFSET,
    PARTITION,
    RAW,
    TIMESTAMP,
    binary_array,
)
from engine.json_scan import arrow_buffer

_MEMORY_RECORDS = aiokafka_fetcher.MemoryRecords


class RawRecords:
    """aiokafka's `MemoryRecords` over `data`, which it keeps as `raw`."""

    def __init__(self, data: bytes) -> None:
        self.raw = data
        self._records = _MEMORY_RECORDS(data)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> object:
        return self._records.next_batch()


aiokafka_fetcher.MemoryRecords = RawRecords


async def fetch(
    consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int
) -> tuple[pl.DataFrame, dict[TopicPartition, int]] | None:
    """At most `max_records` fetched records as one raw batch (`_raw` and the envelope,
    partitions in turn), and each partition's next offset after them; None when nothing
    arrived within `timeout_ms`. Raises what `getmany` raises."""
    fetched = await fetch_partitions(consumer, timeout_ms, max_records)
    if fetched is None:
        return None
    frames = [frame for frame, _ in fetched.values()]
    advanced = {tp: next_offset for tp, (_, next_offset) in fetched.items()}
    return (frames[0] if len(frames) == 1 else pl.concat(frames)), advanced


def caught_up(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer has taken every record fetched and read each assigned partition
    to the high watermark its last fetch reported: the next fetch can only find records
    that arrive from now on. False while a partition has not been fetched yet."""
    if consumer._fetcher._records:
        return False
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None or not assignment.tps:
        return False
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if (
            state.highwater is None
            or not state.has_valid_position
            or state.position < state.highwater
        ):
            return False
    return True


async def fetch_partitions(
    consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int
) -> dict[TopicPartition, tuple[pl.DataFrame, int]] | None:
    """`fetch`, by partition: each one's raw batch and next offset (for readers of several
    topics, whose raw batches do not say the topic)."""
    if consumer._closed:
        raise ConsumerStoppedError()
    consumer._coordinator.check_errors()
    fetcher = consumer._fetcher
    with consumer._subscription.fetch_context():
        while True:
            if fetcher._subscriptions.reassignment_in_progress:
                await fetcher._subscriptions.wait_for_assignment()
            taken: dict[TopicPartition, tuple[pl.DataFrame, int]] = {}
            remaining = max_records
            for tp in list(fetcher._records):
                result = fetcher._records[tp]
                if type(result) is not aiokafka_fetcher.FetchResult:
                    if taken:  # raised with the next call, as getmany does
                        break
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                    result.check_raise()
                read = _take(tp, result, remaining)
                if not result.has_more():  # all read: fetch this partition again
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                if read is None:
                    continue
                taken[tp] = read
                remaining -= read[0].height
                if not remaining:
                    break
            if taken:
                return taken
            if not timeout_ms:
                return None
            waiter = fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=timeout_ms / 1000)
            if not done or fetcher._closed:
                for future in pending:
                    future.cancel()
                return None


def _take(
    tp: TopicPartition, result: aiokafka_fetcher.FetchResult, max_records: int
) -> tuple[pl.DataFrame, int] | None:
    """Up to `max_records` of one partition's fetched records: a raw batch and the offset
    its next read starts at; None when none are there for this consumer."""
    if not result.check_assignment(tp) or not result.has_more():
        return None
    records = result._partition_records
    raw = getattr(records._records, "raw", None)
    offset = records.next_fetch_offset
    try:
        read = None if raw is None else _native.kafka_records(raw, offset, max_records)
    except ValueError as error:  # as aiokafka's own reading raises it; the position stays
        raise CorruptRecordException(
            f"{tp.topic}[{tp.partition}] from offset {offset}: {error}"
        ) from error
    if read is None:  # not a record set the native reader takes: aiokafka's records
        fetched = result.getall(max_records)
        return (raw_frame({tp: fetched}), fetched[-1].offset + 1) if fetched else None
    count, next_offset, exhausted, values, keys, offsets, timestamps = read
    records.next_fetch_offset = next_offset
    result._update_position()
    if exhausted:
        result._partition_records = None
    if not count:
        return None
    table = pa.table(
        {
            RAW: _binary(values),
            KEY: _binary(keys),
            PARTITION: pa.array(np.full(count, tp.partition, np.int32)),
            OFFSET: pa.Array.from_buffers(pa.int64(), count, [None, _buffer(offsets)]),
            TIMESTAMP: pa.Array.from_buffers(pa.int64(), count, [None, _buffer(timestamps)]),
            HEADERS: pa.nulls(count, HEADER_ARROW_TYPE),
        }
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame, next_offset


def _binary(column: tuple) -> pa.Array:
    """A large_binary array of the native reader's (offsets, data, validity bytes)."""
    offsets, data, valid = column
    return binary_array(pa.large_binary(), _buffer(offsets), _buffer(data), _buffer(valid))


def _buffer(handed: tuple[int, int, object] | bytes) -> pa.Buffer:
    """A buffer the native reader handed over (b"" when it never held memory)."""
    return pa.py_buffer(handed) if isinstance(handed, bytes) else arrow_buffer(handed)


def raw_frame(fetched: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> pl.DataFrame:
    """One undecoded batch (`_raw` + envelope) from aiokafka's records, partitions in turn.

    The values go into one Arrow buffer in a single call; headers are built only when some
    record has them, since most topics carry none.
    """
    records = [record for batch in fetched.values() for record in batch]
    count = len(records)
    partitions = np.repeat(
        np.array([tp.partition for tp in fetched], np.int32),
        [len(batch) for batch in fetched.values()],
    )
    if any(record.headers for record in records):
        headers = pa.array(
            [
                [{"key": key, "value": value} for key, value in record.headers] or None
                for record in records
            ],
            HEADER_ARROW_TYPE,
        )
    else:
        headers = pa.nulls(count, HEADER_ARROW_TYPE)
    table = pa.table(
        {
            RAW: pa.array([record.value for record in records], pa.large_binary()),
            KEY: pa.array([record.key for record in records], pa.binary()),
            PARTITION: pa.array(partitions),
            OFFSET: pa.array([record.offset for record in records], pa.int64()),
            TIMESTAMP: pa.array([record.timestamp for record in records], pa.int64()),
            HEADERS: headers,
        }
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
