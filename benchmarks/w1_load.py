"""W1 over Kafka seen from outside the engine: load it in, read its outputs back, time them.

What `make demo` and `benchmarks.w1_kafka` share. Input is written with the engine's own
batching producer (`RawKafkaSink`: one batch per partition, keys partitioned as Kafka's Java
client does), so the load generator costs little CPU next to the engine it measures.

End-to-end latency, as WORKLOAD.md defines it: for each routed output, the time from the
moment its input was produced to the moment the output is readable in its topic. Which
input a routed output came from is not in its value: a redelivery is an exact copy, and
dedup routes a copy again once the earlier one has left its 10-minute horizon. The
reference says which messages are routed (`expect`); all copies of an event share a key,
so an input partition and an output partition, and their outputs are read in the order
their inputs were produced: the k-th output of an event comes from its k-th routed copy.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.w1_generate import W1Message
from benchmarks.w1_reference import ROUTED_TOPICS, W1Reference
from engine.batch import KEY, RAW
from engine.connectors.kafka_fetch import fetch_partitions
from engine.replay import RawKafkaSink

# Tansu holds a fetch that found nothing for up to its max wait, new data or not, so the
# reader's wait bounds how late it sees an output: ~130 ms (p50) with aiokafka's default
# 500 ms, ~4 ms with 5-10 ms, measured here.
READER_FETCH_WAIT_MS = 5
_PRELOAD_CHUNK = 100_000


@dataclass(frozen=True)
class Expectation:
    """What W1 must do with an input, per the reference.

    `outputs`: topic → values, for the correctness check. `routed_inputs`: event id number
    → input index of each of its routed outputs, in order.
    """

    outputs: dict[str, list[bytes]]
    routed_inputs: dict[int, list[int]]


def expect(messages: Sequence[W1Message]) -> Expectation:
    """Run the reference over `messages`, noting which of them each routed output is from."""
    reference = W1Reference()
    routed = [reference.outputs[topic] for topic in ROUTED_TOPICS.values()]
    routed_inputs: dict[int, list[int]] = defaultdict(list)
    events = event_numbers(pl.Series([message.value for message in messages], dtype=pl.Binary))
    for index, ((_, partition, value), event) in enumerate(zip(messages, events, strict=True)):
        before = sum(map(len, routed))
        reference.process(partition, value)
        if sum(map(len, routed)) > before:  # a routed message is valid: it has an id
            routed_inputs[event].append(index)
    return Expectation(reference.outputs, dict(routed_inputs))


#: A W1 value's event number, read from its JSON text.
_ID_NUMBER = r'"id"\s*:\s*"evt-([0-9]+)"'


def event_numbers(values: pl.Series) -> pl.Series:
    """Each W1 value's event number ("evt-N": N), over a whole column at once; null for a
    value without one (a malformed input)."""
    return values.cast(pl.String, strict=False).str.extract(_ID_NUMBER, 1).cast(pl.Int64)


def input_frame(messages: Sequence[W1Message]) -> pl.DataFrame:
    """The messages as `_raw` and `_key` columns, in write order, for `RawKafkaSink`."""
    return pl.DataFrame(
        {
            RAW: pl.Series(RAW, [message.value for message in messages], pl.Binary),
            KEY: pl.Series(KEY, [message.key for message in messages], pl.Binary),
        }
    )


async def preload(bootstrap: str, topic: str, messages: pl.DataFrame) -> None:
    """Write every message to `topic` as fast as the broker takes them, order kept per key."""
    sink = RawKafkaSink(bootstrap, topic)
    try:
        for start in range(0, messages.height, _PRELOAD_CHUNK):
            await sink.write(messages.slice(start, _PRELOAD_CHUNK))
    finally:
        await sink.close()


async def produce_steadily(
    bootstrap: str,
    topic: str,
    messages: pl.DataFrame,
    rate: float,
    produced_at: np.ndarray,
    progress: Callable[[int], None] | None = None,
    tick_s: float = 0.005,
) -> float:
    """Write `messages` to `topic` at `rate` messages/s; return the rate achieved.

    Every `tick_s` it writes the messages whose time has come, so the input arrives as a
    steady stream, not in bursts. `produced_at[i]` is set to the wall-clock time (s) message
    `i` was handed to the producer; `progress` gets each write's count.
    """
    sink = RawKafkaSink(bootstrap, topic)
    await sink.start()
    started = time.perf_counter()
    sent = 0
    try:
        while sent < messages.height:
            due = min(messages.height, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                produced_at[sent:due] = time.time()
                await sink.write(messages.slice(sent, due - sent))
                if progress is not None:
                    progress(due - sent)
                sent = due
            await asyncio.sleep(tick_s)
    finally:
        await sink.close()
    return sent / (time.perf_counter() - started)


async def produce_and_read(
    bootstrap: str,
    topic: str,
    messages: pl.DataFrame,
    rate: float,
    reader: OutputReader,
    ended: Callable[[], object],
) -> float:
    """Write `messages` to `topic` at `rate` (`produce_steadily`, times into
    `reader.produced_at`) while `reader` reads; once all are written, wait for `ended`
    (blocking, so in a thread: the end of the process under test), then until the reader
    has caught up. Returns the rate achieved."""
    await reader.start()
    done = asyncio.Event()
    reading = asyncio.create_task(reader.read_until(done))
    try:
        achieved = await produce_steadily(bootstrap, topic, messages, rate, reader.produced_at)
        await asyncio.to_thread(ended)
        done.set()
        await reading
    finally:
        reading.cancel()
        await reader.stop()
    return achieved


async def next_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition of `topic`'s next offset now: where to start reading what comes next."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        positions = await _next_offsets(consumer, [topic])
    finally:
        await consumer.stop()
    return {partition.partition: offset for partition, offset in positions.items()}


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=READER_FETCH_WAIT_MS,
        max_partition_fetch_bytes=4 << 20,
    )


async def _next_offsets(
    consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> dict[TopicPartition, int]:
    """Assign `consumer` every partition of `topics`, placed at its next offset.

    Found by reading, not only by asking: Tansu's "latest" offset is the first offset of a
    partition's last batch + 1, not its end, so each partition is read on from there.
    """
    await consumer.topics()  # refreshes metadata, so new topics' partitions are known
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    positions = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    for partition, offset in positions.items():
        consumer.seek(partition, offset)
    while fetched := await consumer.getmany(timeout_ms=200):
        for partition, records in fetched.items():
            positions[partition] = records[-1].offset + 1
    return positions


class OutputReader:
    """Reads W1's output topics from their current end, as a user's consumer would.

    Keeps every value per topic (for the correctness check) when `keep_values`, and for each
    routed output the seconds from its input's produce time to the moment it was read.

    Args:
        bootstrap: the broker.
        topics: W1 topic name → the topic to read for it (the names may carry a suffix).
        produced_at: wall-clock produce time (s) per input index.
        routed_inputs: `Expectation.routed_inputs` of the input.
        keep_values: keep the values, not only count them.
        timed: the W1 topics (keys of `topics`) whose outputs are timed; None: the routed
            ones.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Mapping[str, str],
        produced_at: np.ndarray,
        routed_inputs: Mapping[int, Sequence[int]],
        keep_values: bool = True,
        timed: Collection[str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.timed = frozenset(ROUTED_TOPICS.values() if timed is None else timed)
        self.topics = dict(topics)
        self.produced_at = produced_at
        self.routed_inputs = routed_inputs
        self.keep_values = keep_values
        self.values: dict[str, list[bytes]] = {topic: [] for topic in topics}
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self.unexpected = 0  # routed outputs the reference does not have (the check says more)
        self.last_read_at = 0.0
        self._latencies: list[np.ndarray] = []
        self._read_at: list[float] = []  # when each of `_latencies` was read
        self._routed_so_far: defaultdict[int, int] = defaultdict(int)
        self._w1_topic = {name: topic for topic, name in self.topics.items()}
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def read(self) -> int:
        return sum(self.counts.values())

    def latencies(self) -> np.ndarray:
        """Seconds from produce to readable, one per routed output read so far."""
        return np.concatenate(self._latencies) if self._latencies else np.empty(0)

    def latencies_over_time(self, window_s: float) -> list[tuple[float, np.ndarray]]:
        """`latencies` by when they were read: (seconds since the first read, latencies)
        per `window_s` window, to see whether they drift during a run."""
        windows: defaultdict[int, list[np.ndarray]] = defaultdict(list)
        first = self._read_at[0] if self._read_at else 0.0
        for read_at, latencies in zip(self._read_at, self._latencies, strict=True):
            windows[int((read_at - first) / window_s)].append(latencies)
        return [(w * window_s, np.concatenate(windows[w])) for w in sorted(windows)]

    async def start(self) -> None:
        """Connect and take position at the topics' current end (before any new output)."""
        consumer = _consumer(self.bootstrap)
        await consumer.start()
        await _next_offsets(consumer, self.topics.values())
        self._consumer = consumer

    async def read_until(self, done: asyncio.Event, quiet_s: float = 0.5) -> None:
        """Read until nothing new has come for `quiet_s` after `done` was set (counting by
        reading: Tansu's "latest" offset is not the high watermark)."""
        assert self._consumer is not None, "start() first"
        quiet_since: float | None = None
        while True:
            fetched = await fetch_partitions(self._consumer, 50, 50_000)
            if fetched:
                self._record(time.time(), {tp: frame for tp, (frame, _) in fetched.items()})
                quiet_since = None
            elif done.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _record(self, read_at: float, fetched: Mapping[TopicPartition, pl.DataFrame]) -> None:
        """Count what was read (raw batches per partition, read natively: per-record Python
        would make this reader, not the engine, what the latency measures)."""
        self.last_read_at = read_at
        for partition, frame in fetched.items():
            topic = self._w1_topic[partition.topic]
            self.counts[topic] += frame.height
            if self.keep_values:
                self.values[topic].extend(frame.get_column(RAW).to_list())
            if topic in self.timed:
                events = event_numbers(frame.get_column(RAW))
                inputs = [i for i in map(self._input_of, events.to_list()) if i is not None]
                self._latencies.append(read_at - self.produced_at[inputs])
                self._read_at.append(read_at)

    def _input_of(self, event: int | None) -> int | None:
        """The input index of a routed output of event `event`; None for one the reference
        lacks."""
        inputs = self.routed_inputs.get(event, ()) if event is not None else ()
        routed_before = self._routed_so_far[event] if event is not None else 0
        if routed_before >= len(inputs):
            self.unexpected += 1
            return None
        self._routed_so_far[event] = routed_before + 1
        return inputs[routed_before]


def percentiles_ms(latencies: np.ndarray) -> dict[str, float]:
    """p50, p95, p99 and max of `latencies` (seconds), in milliseconds."""
    points = np.percentile(latencies, [50, 95, 99, 100]) * 1000
    return dict(zip(("p50", "p95", "p99", "max"), points.tolist(), strict=True))
