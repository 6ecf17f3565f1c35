"""Kafka source and sink on aiokafka, and topic admin.

Delivery is at least once: the source commits a batch's offsets only when the runner says
its outputs are acknowledged (`commit`, called after every sink's `write` returned), and
the sink's `write` returns only once the broker has acknowledged every record. A record
is therefore never lost; after a crash it may be read and written again.

With a checkpoint (`engine.runners.checkpoint`) the effects are exactly once, without
broker transactions: the source restarts at the checkpoint's offsets (`KafkaSource.resume`)
and each sink reads back what it wrote after the checkpoint and drops the same records when
the resumed run produces them again (`KafkaSink.resume`).

Both ends work on whole batches. The source reads what the consumer fetched into one Arrow
batch in one native pass (`engine.connectors.kafka_fetch`: no Python object per record;
the values in one buffer, decoded later in one call); the sink groups a batch's
rows by partition and builds one record batch per partition and size limit from the key and
value columns in one native pass (aiokafka's `create_batch`, a record at a time, only for
headers or compression), never one `send` per message.

Connecting retries with exponential backoff (`Retry`); when the broker stays unreachable
the error names its address, e.g. ``cannot reach Kafka at 127.0.0.1:1: ...``. Looking up
how many partitions an input topic has (`partition_count`) waits the same way for a topic
that does not exist yet, then fails naming it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import numpy as np
import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from engine import _native
from engine.batch import (
    HEADERS,
    KEY,
    OFFSET,
    PARTITION,
    REASON,
    STAGE,
    Columns,
    binary_columns,
)
from engine.connectors import kafka_producers as producers
from engine.connectors.base import Offsets, Position, SinkPosition
from engine.connectors.encoding import encode_values, is_dead_letter
from engine.connectors.kafka_fetch import caught_up, fetch
from engine.errors import CheckpointError, ConfigError, ConnectorError
from engine.partitioning import partition_for
from engine.spec import Prefetch, StartAt

log = logging.getLogger(__name__)

# Kafka's default message.max.bytes is 1 MiB + 12: a produce batch stays under it.
_MAX_BATCH_BYTES = 1_000_000
_TOPIC_ALREADY_EXISTS = 36
# a Kafka sink's record identity, and how many copies were read back (`KafkaSink.resume`)
_PARTITION, _KEY, _VALUE, _COUNT, _NTH = "partition", "key", "value", "count", "nth"
_IDENTITY = (_PARTITION, _KEY, _VALUE)

StartPosition = Literal["earliest", "latest"] | StartAt
Header = tuple[str, bytes | None]


class Retry(msgspec.Struct, frozen=True):
    """Exponential backoff: `attempts` tries, waiting `first_delay_s`, doubled each time up
    to `max_delay_s`, between them. The default gives up after about 10 s."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 4.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (counted from 1)."""
        return min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s)


DEFAULT_RETRY = Retry()


class _Client(Protocol):
    async def start(self) -> None: ...


_C = TypeVar("_C", bound=_Client)


async def connect(
    bootstrap: str,
    make_client: Callable[[], _C],
    close: Callable[[_C], Awaitable[Any]],
    retry: Retry,
) -> _C:
    """Start a fresh client from `make_client` until one connects, backing off in between.

    Raises ConnectorError naming `bootstrap` once `retry.attempts` have failed to connect.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        client = make_client()
        try:
            await client.start()
            return client
        except KafkaConnectionError as error:
            await close(client)
            if attempt >= retry.attempts:
                raise ConnectorError(
                    f"cannot reach Kafka at {bootstrap}: no connection after {attempt} attempts "
                    f"over {time.monotonic() - started:.1f} s; is a broker listening there?"
                ) from error
            log.warning(
                "cannot reach Kafka at %s (attempt %d of %d); retrying in %.1f s",
                bootstrap,
                attempt,
                retry.attempts,
                retry.delay(attempt),
            )
            await asyncio.sleep(retry.delay(attempt))


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    retry: Retry = DEFAULT_RETRY,
) -> None:
    """Create the topics of `topics` (name → partition count) that do not exist yet.

    An existing topic is left as it is, whatever its partition count. Raises
    ConnectorError naming the topic when the broker refuses to create it.
    """
    admin = await connect(
        bootstrap,
        lambda: AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="conflux-admin"),
        AIOKafkaAdminClient.close,
        retry,
    )
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for name, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise ConnectorError(
                    f"Kafka at {bootstrap}: cannot create topic {name!r} "
                    f"with {topics[name]} partitions: error {code}: {message}"
                )
    except KafkaError as error:
        raise ConnectorError(f"Kafka at {bootstrap}: cannot create topics: {error}") from error
    finally:
        await admin.close()


class KafkaSource:
    """Consume `topic` for consumer group `group`, one raw batch per fetch.

    A batch holds at most `batch_size` records and is cut after at most `linger_ms` of
    waiting, so latency stays low under light traffic. Each partition's records keep their
    order. Offsets are committed by `commit`, which the runner calls once a batch's outputs
    are acknowledged by its sinks: a crash before then makes the group read the batch again.

    A rebalance waits for the batch in flight to be delivered and committed before the
    revoked partitions are released, so their next owner starts after it.

    `resume` (for checkpoints) makes the source's own position, not the group's committed
    offsets, decide where each partition it has read continues.

    When the next fetch goes to the broker is `prefetch`'s choice. aiokafka fetches in the
    background: as soon as a batch is taken, the next fetch is sent, and a broker holds it
    until records come or `linger_ms` passes. Apache Kafka answers it as soon as records
    come; Tansu, the embedded broker, holds a fetch that found nothing for the whole
    `linger_ms`, records or not, so a source that has caught up got each batch one
    `linger_ms` after the last, however fast the runner was. With "when_behind" (the
    default), a source that is behind (records fetched and not yet taken, or a partition
    short of the high watermark its last fetch reported) has the next fetch sent in the
    background as before, while one that has caught up pauses its partitions until the
    runner asks for the next batch: that fetch then finds what arrived meanwhile and is
    answered at once. Measured on the project's machine: W1's p99 latency 226 ms
    instead of 274 ms at 69,000 msg/s (benchmarks/RESULTS.md). "always" keeps aiokafka's
    background fetching: against Apache Kafka it saves the round trip a paused fetch costs
    a caught-up source per batch.

    The source joins the group and takes the partitions its rebalancing gives it, unless
    `partitions` names them: then it assigns them itself and never joins (no join to wait
    for, no rebalance), while still committing its offsets to the group.

    Args:
        bootstrap: "host:port" of a broker.
        topic, group: what to consume, and the consumer group that owns the offsets.
        batch_size: most records per batch.
        linger_ms: longest wait for records before an empty poll.
        start: where a partition the group has no committed offset for starts: "earliest",
            "latest", `{"timestamp": epoch_ms}` or `{"offsets": {partition: offset}}`
            (unlisted partitions start from the earliest). On Tansu, "latest" lands on the
            last batch's first offset + 1, not on the high watermark.
        stop_when_idle_ms: end the batches once no record has arrived for this long while
            partitions are assigned: a bounded run (tests, the file-like W1 form). None runs
            until the runner is stopped.
        session_timeout_ms: consumer-group session; Tansu holds a join for about half of it.
        retry: backoff for connecting.
        prefetch: "when_behind" or "always": when the next fetch is sent (above).
        partitions: read exactly these partitions (manual assignment) instead of joining
            the group's rebalancing; the group still keeps the committed offsets. "all":
            every partition the topic has when the source connects (`partition_count`: it
            waits with `retry`'s backoff for a missing topic, then raises ConnectorError
            naming it); partitions added later are read from the next run on. The Ray
            runner's workers name theirs, so that keyed state moves with them; the local
            runner reads "all" when the run is checkpointed (`open_source`), as its
            checkpoint, not the group, decides where a rerun starts.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        batch_size: int = 10_000,
        linger_ms: int = 50,
        start: StartPosition | Mapping[str, Any] = "earliest",
        stop_when_idle_ms: int | None = None,
        session_timeout_ms: int = 10_000,
        retry: Retry = DEFAULT_RETRY,
        prefetch: Prefetch = "when_behind",
        partitions: Sequence[int] | Literal["all"] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.partitions: tuple[int, ...] | Literal["all"] | None = (
            partitions if partitions is None or partitions == "all" else tuple(partitions)
        )
        self.batch_size = batch_size
        self.linger_ms = linger_ms
        self.prefetch = prefetch
        try:
            self.start = msgspec.convert(start, StartPosition)
        except msgspec.ValidationError as error:
            raise ConfigError(f"Kafka source {topic!r}: start: {error}") from error
        self.stop_when_idle_ms = stop_when_idle_ms
        self.session_timeout_ms = session_timeout_ms
        self.retry = retry
        self._consumer: AIOKafkaConsumer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_offsets: dict[TopicPartition, int] = {}
        self._resumed = False
        self._in_flight: asyncio.Lock | None = None
        self._last_record_at = 0.0
        self._assignment: frozenset[int] = frozenset()
        self._commit_refused = False
        self._lag: dict[int, int] = {}

    @property
    def assignment(self) -> frozenset[int]:
        """The partitions this source owns now; empty while its group rebalances."""
        return self._assignment

    async def batches(self) -> AsyncIterator[pl.DataFrame]:
        in_flight = self._in_flight = asyncio.Lock()
        consumer = await self._open()
        loop = asyncio.get_running_loop()
        self._last_record_at = loop.time()
        try:
            while True:
                fetched = await self._fetch(consumer)
                if fetched is None:
                    if self._idle_too_long(loop.time()):
                        return
                    continue
                self._last_record_at = loop.time()
                frame, advanced = fetched
                # Held while the runner works on the batch: a rebalance waits for it.
                async with in_flight:
                    self._advance(advanced)
                    yield frame
        finally:
            # A resumed source stays in its group until `close`: the runner commits the last
            # batches of a bounded run only once its final checkpoint is written.
            if not self._resumed:
                await self.close()

    async def fetch(self) -> pl.DataFrame | None:
        """One batch of what arrives within `linger_ms` (None: nothing did); for runners
        that poll instead of iterating `batches`, with manual assignment (`partitions`)."""
        consumer = self._consumer or await self._open()
        fetched = await self._fetch(consumer)
        if fetched is None:
            return None
        frame, advanced = fetched
        self._advance(advanced)
        return frame

    async def _fetch(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[pl.DataFrame, dict[TopicPartition, int]] | None:
        """The next batch (`kafka_fetch.fetch`), fetched when `prefetch` says."""
        paused = consumer.paused()
        if paused:
            consumer.resume(*paused)
        fetched = await fetch(consumer, self.linger_ms, self.batch_size)
        if self.prefetch == "when_behind" and fetched is not None and caught_up(consumer):
            consumer.pause(*consumer.assignment())
        return fetched

    def _advance(self, advanced: Mapping[TopicPartition, int]) -> None:
        """Record that a batch was handed to the runner: each partition's next offset, and
        how far it is behind (`lag`)."""
        for tp, offset in advanced.items():
            self._uncommitted[tp] = self._next_offsets[tp] = offset
        consumer = self._consumer
        if consumer is not None:
            assigned = consumer.assignment()
            behind = {
                tp.partition: max(highwater - offset, 0)
                for tp, offset in advanced.items()
                if tp in assigned and (highwater := consumer.highwater(tp)) is not None
            }
            self._lag = {**self._lag, **behind}  # a new dict: a scrape may be reading

    def lag(self) -> dict[int, int]:
        """Records each partition held past what this source had handed to the runner, as
        of its last batch from that partition (by the high watermark of the fetch that
        brought it). Safe to call from another thread (a metrics scrape)."""
        return self._lag

    def resume(self, position: Position | None) -> None:
        """Continue from `position` (a checkpoint's offsets; None: nothing read yet).

        Each partition in it starts at its offset even when the group committed another
        (older, after a crash between checkpoint and commit); others start as usual. From
        then on the source goes by its own position: a partition handed back by a rebalance
        continues after the last batch this source yielded, since the runner's state holds
        every record before it. Call it before `batches`; the source then stays connected
        when its batches end, until `close`.
        """
        if position is not None and not isinstance(position, dict):
            raise CheckpointError(
                f"Kafka source {self.topic!r}: a checkpoint's position must be offsets per "
                f"topic and partition, got {position!r} (was the source another kind?)"
            )
        offsets = (position or {}).get(self.topic, {})
        self._next_offsets = {TopicPartition(self.topic, p): o for p, o in offsets.items()}
        self._resumed = True

    def position(self) -> Offsets:
        """The next offset of each partition after the batches yielded so far (and, after
        `resume`, its position's)."""
        return {
            self.topic: {tp.partition: offset for tp, offset in sorted(self._next_offsets.items())}
        }

    async def commit(self, position: Offsets | None = None) -> None:
        """Commit the offsets of every batch yielded so far (their outputs are acknowledged),
        or, given a checkpoint's `position`, this source's partitions' offsets in it.

        A source that assigns itself its partitions is no member of its group, and the
        broker refuses its commits while the group has members: another process reading
        the topic in this group, or one that stopped without leaving (Tansu keeps a member
        of a group's generation 0 past its session). Such a source reads by a checkpoint's
        or a Ray runner's positions, not the group's, so the refusal is logged and the
        offsets are committed with the next commit the group accepts; any other failure
        raises ConnectorError.
        """
        if position is not None:
            mine = self._assignment if self.partitions is not None else None
            offsets = {
                TopicPartition(self.topic, partition): offset
                for partition, offset in position.get(self.topic, {}).items()
                if mine is None or partition in mine
            }
        else:
            offsets, self._uncommitted = self._uncommitted, {}
        if self._consumer is None or not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as error:
            if self.partitions is None:
                raise self._commit_error(error) from error
            if not self._commit_refused:
                log.warning(
                    "Kafka at %s: group %r has members, so it refuses the offsets of %r from "
                    "this source, which assigns itself its partitions; they are committed "
                    "once the group accepts them. Is another process reading the topic in "
                    "this group?",
                    self.bootstrap,
                    self.group,
                    self.topic,
                )
            self._commit_refused = True
            if position is None:  # newer offsets, taken since, win
                self._uncommitted = {**offsets, **self._uncommitted}
            return
        except KafkaError as error:
            raise self._commit_error(error) from error
        self._commit_refused = False

    def _commit_error(self, error: KafkaError) -> ConnectorError:
        return ConnectorError(
            f"Kafka at {self.bootstrap}: group {self.group!r} cannot commit offsets "
            f"of {self.topic!r}: {error}"
        )

    async def close(self) -> None:
        """Leave the group and disconnect; uncommitted batches will be read again."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _open(self) -> AIOKafkaConsumer:
        partitions = (
            range(await partition_count(self.bootstrap, self.topic, retry=self.retry))
            if self.partitions == "all"
            else self.partitions
        )
        reset = "latest" if self.start == "latest" or _by_timestamp(self.start) else "earliest"
        consumer = await connect(
            self.bootstrap,
            lambda: AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group,
                client_id="conflux",
                enable_auto_commit=False,
                auto_offset_reset=reset,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=max(self.session_timeout_ms // 3, 100),
                # a fetch may wait no longer than a batch may linger: with aiokafka's 500 ms
                # default, a quiet topic's records waited a whole fetch round (p50 +60 ms)
                fetch_max_wait_ms=max(self.linger_ms, 1),
            ),
            AIOKafkaConsumer.stop,
            self.retry,
        )
        self._consumer = consumer
        if partitions is None:
            consumer.subscribe([self.topic], listener=_Rebalance(self))
            return consumer
        assigned = {TopicPartition(self.topic, partition) for partition in partitions}
        consumer.assign(sorted(assigned))
        await self._partitions_assigned(assigned)
        return consumer

    def _idle_too_long(self, now: float) -> bool:
        # a source waiting for its group (join, rebalance) is not idle: it cannot read yet
        if self.stop_when_idle_ms is None or not self._assignment:
            return False
        return (now - self._last_record_at) * 1000 >= self.stop_when_idle_ms

    async def _partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        assert self._in_flight is not None  # callbacks come only while `batches` runs
        self._assignment = frozenset()
        async with self._in_flight:
            # The batch in flight is delivered and, if the runner commits, committed:
            # what is left uncommitted here was never acknowledged and must be read again.
            for tp in revoked:
                self._uncommitted.pop(tp, None)
            gone = {tp.partition for tp in revoked}
            self._lag = {p: behind for p, behind in self._lag.items() if p not in gone}

    async def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assignment = frozenset(tp.partition for tp in assigned)
        self._last_record_at = asyncio.get_running_loop().time()
        consumer = self._consumer
        if consumer is None:
            return
        if isinstance(self.start, StartAt):
            await _seek_to_start(consumer, assigned, self.start)
        if self._resumed:
            for tp in assigned & self._next_offsets.keys():
                consumer.seek(tp, self._next_offsets[tp])


async def _seek_to_start(
    consumer: AIOKafkaConsumer, assigned: set[TopicPartition], start: StartAt
) -> None:
    """Place the partitions the group has no committed offset for at `start`."""
    fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
    if start.offsets is not None:
        for tp in fresh:
            if tp.partition in start.offsets:
                consumer.seek(tp, start.offsets[tp.partition])
    elif start.timestamp is not None and fresh:
        found = await consumer.offsets_for_times({tp: start.timestamp for tp in fresh})
        for tp, position in found.items():
            if position is not None:  # None: every record is older, start at the end
                consumer.seek(tp, position.offset)


async def partition_count(bootstrap: str, topic: str, *, retry: Retry = DEFAULT_RETRY) -> int:
    """How many partitions `topic` has, looking again with `retry`'s backoff while it does
    not exist.

    A pipeline's partitioning is that of its input, which must be there first; waiting as
    for an unreachable broker covers a producer that creates it just after the pipeline
    starts. Raises ConnectorError naming the topic and `bootstrap` when it is still missing
    after `retry.attempts` looks, or when the broker cannot be reached or read.
    """
    admin = await connect(
        bootstrap,
        lambda: AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="conflux-admin"),
        AIOKafkaAdminClient.close,
        retry,
    )
    started = time.monotonic()
    attempt = 0
    try:
        while True:
            attempt += 1
            # Every topic's metadata: asking for this one by name would have a broker with
            # auto.create.topics.enable create it, with the broker's partition count.
            found = [
                len(described["partitions"])
                for described in await admin.describe_topics()
                if described["topic"] == topic
            ]
            if found and found[0]:
                return found[0]
            if attempt >= retry.attempts:
                raise ConnectorError(
                    f"Kafka at {bootstrap}: topic {topic!r} does not exist (looked {attempt} "
                    f"times over {time.monotonic() - started:.1f} s); a pipeline reads the "
                    "partitions of its input topic, so create it first"
                )
            log.warning(
                "Kafka at %s: topic %r does not exist (attempt %d of %d); looking again in %.1f s",
                bootstrap,
                topic,
                attempt,
                retry.attempts,
                retry.delay(attempt),
            )
            await asyncio.sleep(retry.delay(attempt))
    except KafkaError as error:
        raise ConnectorError(
            f"Kafka at {bootstrap}: cannot read the metadata of topic {topic!r}: {error}"
        ) from error
    finally:
        await admin.close()


def topic_partitions(bootstrap: str, topic: str, retry: Retry = DEFAULT_RETRY) -> int:
    """`partition_count`, blocking (for callers outside an event loop: the Ray runner)."""
    return asyncio.run(partition_count(bootstrap, topic, retry=retry))


def _by_timestamp(start: StartPosition) -> bool:
    return isinstance(start, StartAt) and start.timestamp is not None


class _Rebalance(ConsumerRebalanceListener):
    """Forwards the group's rebalance callbacks to its source."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.source._partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.source._partitions_assigned(assigned)


class KafkaSink:
    """Produce each batch to `topic`; `write` returns once the broker acknowledged it all.

    A record's value is its JSON text (a dead letter's `{"reason", "raw"}`), its key the
    `_key` column, its partition the one the Java client's default partitioner picks for
    that key (murmur2); records without a key are spread round robin. `_headers` are
    carried; a dead letter also gets the headers `reason`, `stage`, `source.topic` (when
    `source_topic` is known), `source.partition` and `source.offset`. Each partition's
    records keep their order. A write splits its rows by partition and builds each record
    batch natively straight from the whole batch's columns. Sinks of one process with the
    same broker and settings share one producer (`engine.connectors.kafka_producers`), so
    the writes a runner makes to all its sinks at once go out as one produce request.

    A delivery that fails with a retriable error is sent again after a backoff; the last
    failure raises ConnectorError naming topic and partition, so the runner stops before
    committing the source's offsets. A resend may duplicate records (at least once). An
    unreachable broker fails a write after about `retry.attempts` × `request_timeout_ms`.

    For checkpoints, the sink knows the next offset of each partition from its delivery
    results (`position`). `resume` reads back what was written after a checkpoint, and
    `write` then drops a row equal (partition, key and value) to a record read back, once
    per copy: outputs are a function of the input, so the resumed run produces those
    records again, and they are written once. Rows without a key match on key and value
    alone, as their partition is round robin. While records remain unmatched, a write
    costs one hash join of its rows with them; after that, nothing.

    Args:
        bootstrap, topic: where to write; the topic is created with `partitions` partitions
            when missing (an existing topic keeps its own count, which keys then follow).
        compression: "gzip", "snappy", "lz4", "zstd" (the last three need their libraries).
        acks: "all" (every in-sync replica), 1 (the leader) or 0 (none; nothing to retry).
        source_topic: the topic dead letters came from, for their `source.topic` header.
        retry: backoff for connecting and for resending a failed batch.
        request_timeout_ms: how long one delivery attempt may take (aiokafka retries
            within it).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int = 4,
        compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = None,
        acks: Literal["all", 1, 0] = "all",
        source_topic: str | None = None,
        retry: Retry = DEFAULT_RETRY,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.compression = compression
        self.acks = acks
        self.source_topic = source_topic
        self.retry = retry
        self.request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._partition_count = 0
        self._round_robin = 0
        self._next_offsets: dict[int, int] = {}
        self._unmatched: pl.DataFrame | None = None

    async def start(self) -> None:
        """Create the topic if missing and connect; `write` does it when not done before."""
        if self._producer is not None:
            return
        await ensure_topics(self.bootstrap, {self.topic: self.partitions}, retry=self.retry)
        settings = self._producer_settings()
        try:
            producer = await producers.acquire(
                settings, lambda: connect(self.bootstrap, self._new_producer, _stop, self.retry)
            )
        except (ValueError, RuntimeError) as error:  # aiokafka's checks of its settings
            raise ConnectorError(f"Kafka sink {self.topic!r}: {error}") from error
        try:
            self._partition_count = len(await producer.partitions_for(self.topic))
        except KafkaError as error:
            await producers.release(settings)
            raise ConnectorError(
                f"Kafka at {self.bootstrap}: no metadata for topic {self.topic!r}: {error}"
            ) from error
        self._producer = producer

    async def resume(self, position: SinkPosition | None) -> None:
        """Continue the topic from a checkpoint's `position` (None: a fresh start).

        Each partition is read from the checkpoint's offset to its end: those records, with
        the checkpoint's own unmatched ones, are what `write` must not write again. A
        partition the checkpoint does not name (None: every one) is only read to find its
        end. Raises CheckpointError when a partition ends before the checkpoint's offset
        (the topic was deleted or truncated since), and with `acks=0`, which gives no offsets.
        """
        if self.acks == 0:
            raise CheckpointError(
                f"Kafka sink {self.topic!r}: checkpoints need acks 'all' or 1 (acks 0 gives "
                "no offsets to resume from)"
            )
        offsets: Position = {} if position is None else position.at
        if not isinstance(offsets, dict):
            raise CheckpointError(
                f"Kafka sink {self.topic!r}: a checkpoint's position must be offsets per "
                f"topic and partition, got {offsets!r} (was the sink another kind?)"
            )
        await self.start()
        ends, written = await read_to_end(
            self.bootstrap,
            self.topic,
            self._partition_count,
            offsets.get(self.topic, {}),
            retry=self.retry,
        )
        self._next_offsets = ends
        if position is not None and position.unmatched is not None:
            written = pl.concat([written, position.unmatched], how="vertical_relaxed")
        unmatched = written.group_by(_IDENTITY).agg(pl.col(_COUNT).sum())
        self._unmatched = unmatched if unmatched.height else None

    async def position(self) -> SinkPosition:
        """The next offset of each partition (every write returned is acknowledged), and the
        records read back by `resume` that no write has matched yet."""
        return SinkPosition({self.topic: dict(sorted(self._next_offsets.items()))}, self._unmatched)

    def _producer_settings(self) -> producers.ProducerSettings:
        return producers.ProducerSettings(
            self.bootstrap, self.acks, self.compression, _MAX_BATCH_BYTES, self.request_timeout_ms
        )

    def _new_producer(self) -> AIOKafkaProducer:
        settings = self._producer_settings()
        return AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id="conflux",
            acks=settings.acks,
            compression_type=settings.compression,
            max_batch_size=settings.max_batch_size,
            request_timeout_ms=settings.request_timeout_ms,
        )

    async def write(self, frame: pl.DataFrame) -> None:
        """Produce `frame`'s rows; return once the broker acknowledged every one of them."""
        if not frame.height:
            return
        await self.start()
        keys = (
            frame.get_column(KEY)
            if KEY in frame.columns
            else pl.Series(KEY, [None] * frame.height, pl.Binary)
        )
        values = encode_values(frame).cast(pl.Binary)
        key_columns = binary_columns(keys)
        partitions = self._partitions(key_columns)
        if self._unmatched is not None:
            # rows written before a restart go to a partition past the last: never sent
            partitions[self._written_before(keys, values, partitions)] = self._partition_count
        await self._produce(key_columns, keys, values, self._headers(frame), partitions)

    async def _produce(
        self,
        key_columns: Columns,
        keys: pl.Series,
        values: pl.Series,
        headers: list[list[Header] | None] | None,
        partitions: np.ndarray,
    ) -> None:
        """Send each row to its partition in `partitions` (`_partitions`; one past the last:
        not sent), every partition's rows in their order, all partitions at once; return
        once every row is acknowledged. `key_columns` are `keys` as `binary_columns`."""
        # a stable sort keeps each partition's rows in their order
        order = np.argsort(partitions, kind="stable")
        bounds = np.searchsorted(partitions[order], np.arange(self._partition_count + 1))
        batches = self._batches(key_columns, keys, values, headers)
        sends = [
            self._send_partition(
                partition, batches, order[bounds[partition] : bounds[partition + 1]]
            )
            for partition in range(self._partition_count)
            if bounds[partition + 1] > bounds[partition]
        ]
        # every partition runs to its end before a failure is raised: none is left in flight
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producers.release(self._producer_settings())

    def _written_before(
        self, keys: pl.Series, values: pl.Series, partitions: np.ndarray
    ) -> np.ndarray:
        """Which rows match a record still unmatched since `resume`; they become matched.

        Each record read back matches one row: the first rows equal to it, in order.
        """
        assert self._unmatched is not None
        rows = _identity(keys, values, partitions).with_columns(
            pl.int_range(pl.len()).over(_IDENTITY).alias(_NTH)
        )
        counts = rows.join(
            self._unmatched, on=_IDENTITY, how="left", nulls_equal=True, maintain_order="left"
        )
        written = (counts.get_column(_NTH) < counts.get_column(_COUNT)).fill_null(False)
        matched = rows.filter(written).group_by(_IDENTITY).agg(pl.len().alias(_NTH))
        unmatched = (
            self._unmatched.join(matched, on=_IDENTITY, how="left", nulls_equal=True)
            .with_columns(pl.col(_COUNT) - pl.col(_NTH).fill_null(0))
            .filter(pl.col(_COUNT) > 0)
            .drop(_NTH)
        )
        self._unmatched = unmatched if unmatched.height else None
        return written.to_numpy()

    def _partitions(self, keys: Columns) -> np.ndarray:
        """Kafka's default partition per key; null keys round robin across batches."""
        count = self._partition_count
        partitions = partition_for(keys, count)
        _, _, valid = keys
        if valid is not None:
            missing = valid == 0
            nulls = int(missing.sum())
            partitions[missing] = (self._round_robin + np.arange(nulls)) % count
            self._round_robin = (self._round_robin + nulls) % count
        return partitions

    def _headers(self, frame: pl.DataFrame) -> list[list[Header] | None] | None:
        """Each row's Kafka headers: its `_headers`, and for dead letters where they failed.

        None when no row has any, the usual case, which costs nothing per row.
        """
        carried: list[list[Header] | None] | None = None
        if HEADERS in frame.columns and frame.get_column(HEADERS).null_count() < frame.height:
            carried = [
                [(pair["key"], pair["value"]) for pair in pairs] if pairs else None
                for pairs in frame.get_column(HEADERS).to_list()
            ]
        if not is_dead_letter(frame):
            return carried
        origin = frame.select(
            REASON,
            STAGE,
            *(
                pl.col(name) if name in frame.columns else pl.lit(None).alias(name)
                for name in (PARTITION, OFFSET)
            ),
        ).iter_rows()
        headers: list[list[Header] | None] = []
        for own, (reason, stage, partition, offset) in zip(
            carried or [None] * frame.height, origin, strict=True
        ):
            pairs = [*(own or ()), ("reason", _text(reason)), ("stage", _text(stage))]
            if self.source_topic is not None:
                pairs.append(("source.topic", self.source_topic.encode()))
            if partition is not None:
                pairs.append(("source.partition", str(partition).encode()))
            if offset is not None:
                pairs.append(("source.offset", str(offset).encode()))
            headers.append(pairs)
        return headers

    def _batches(
        self,
        key_columns: Columns,
        keys: pl.Series,
        values: pl.Series,
        headers: list[list[Header] | None] | None,
    ) -> BatchesFrom:
        """The rows as record batches: built natively in one pass per batch (the usual
        case), or by aiokafka a record at a time for headers and compression, which the
        native builder does not write."""
        if headers is None and self.compression is None:
            return _native_batches(key_columns, binary_columns(values))
        key_list, value_list = keys.to_list(), values.to_list()

        def batch_from(rows: np.ndarray, start: int) -> tuple[BatchBuilder, int]:
            assert self._producer is not None
            batch = self._producer.create_batch()
            return batch, _fill(batch, key_list, value_list, headers, rows, start)

        return batch_from

    async def _send_partition(self, partition: int, batches: BatchesFrom, rows: np.ndarray) -> None:
        """Send `rows` (row numbers) to `partition` in size-bound batches, one after another
        (order)."""
        start = 0
        while start < len(rows):
            start = await self._send_batch(partition, batches, rows, start)

    async def _send_batch(
        self, partition: int, batches: BatchesFrom, rows: np.ndarray, start: int
    ) -> int:
        """Send the rows from `rows[start]` on that fit one batch; return where in `rows` the
        next batch starts."""
        assert self._producer is not None
        attempt = 0
        while True:
            attempt += 1
            batch, end = batches(rows, start)  # anew for each attempt: a batch is sent once
            try:
                delivery = await self._producer.send_batch(batch, self.topic, partition=partition)
                metadata = await delivery
                # the batch's first offset; acks=0 gives -1, which no checkpoint uses
                self._next_offsets[partition] = metadata.offset + end - start
                return end
            except KafkaError as error:
                retriable = error.retriable or isinstance(error, KafkaTimeoutError)
                if not retriable or attempt >= self.retry.attempts:
                    raise ConnectorError(
                        f"Kafka at {self.bootstrap}: cannot deliver {end - start} records to "
                        f"topic {self.topic!r} partition {partition}: {error!r}"
                        + (f" (after {attempt} attempts)" if retriable else "")
                    ) from error
                log.warning(
                    "delivery to %s[%d] failed (attempt %d of %d): %r; resending in %.1f s",
                    self.topic,
                    partition,
                    attempt,
                    self.retry.attempts,
                    error,
                    self.retry.delay(attempt),
                )
                await asyncio.sleep(self.retry.delay(attempt))


#: Builds the batch of a partition's rows (row numbers, in order) from an index into them
#: on: the batch and the first index left out.
BatchesFrom = Callable[[np.ndarray, int], tuple[Any, int]]


class PrebuiltBatch:
    """A record batch built by native code, handed to aiokafka's `send_batch` in place of
    its `BatchBuilder` (the methods its accumulator calls); closed: nothing is appended."""

    def __init__(self, data: bytes, records: int) -> None:
        self._data = data
        self._records = records

    def append(self, **_: Any) -> None:
        return None

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def size(self) -> int:
        return len(self._data)

    def record_count(self) -> int:
        return self._records

    def _build(self) -> bytes:
        return self._data

    def _set_producer_state(self, *_: Any) -> None:
        raise ConnectorError("batches built natively carry no producer id (idempotence)")


def _native_batches(keys: Columns, values: Columns) -> BatchesFrom:
    """Rows built into batches by native code (`engine._native.kafka_batch`) in one pass,
    straight from the whole batch's columns, each record stamped with the time its batch
    is built, as aiokafka stamps them."""

    def batch_from(rows: np.ndarray, start: int) -> tuple[PrebuiltBatch, int]:
        now_ms = int(time.time() * 1000)
        data, end = _native.kafka_batch(keys, values, rows, start, _MAX_BATCH_BYTES, now_ms)
        return PrebuiltBatch(data, end - start), end

    return batch_from


def _fill(
    batch: BatchBuilder,
    keys: list[bytes | None],
    values: list[bytes],
    headers: list[list[Header] | None] | None,
    rows: np.ndarray,
    start: int,
) -> int:
    """Append `rows` from index `start` on until `batch` is full; return the first index
    left out.

    A batch always takes its first record, however large, so every call makes progress.
    """
    append = batch.append
    for index in range(start, len(rows)):
        row = rows[index]
        pairs = headers[row] if headers is not None else None
        if append(timestamp=None, key=keys[row], value=values[row], headers=pairs) is None:
            return index
    return len(rows)


async def read_to_end(
    bootstrap: str,
    topic: str,
    partitions: int,
    starts: Mapping[int, int],
    *,
    retry: Retry = DEFAULT_RETRY,
    timeout_s: float = 30.0,
) -> tuple[dict[int, int], pl.DataFrame]:
    """Read `topic` to its end: the next offset of each partition, and the records of the
    partitions in `starts` from their start offset on.

    A partition not in `starts` is read from its "latest" offset only to find its end.
    The end is the high watermark of fetch responses, reached by reading: a Tansu broker's
    ListOffsets "latest" is the last batch's first offset + 1, not the high watermark.
    Records come as `partition` (null when the key is), `key`, `value` and `count` (1).
    Raises ConnectorError when no record comes for `timeout_s` before the end is reached.
    """
    consumer = await connect(
        bootstrap,
        lambda: AIOKafkaConsumer(
            bootstrap_servers=bootstrap, client_id="conflux", enable_auto_commit=False
        ),
        AIOKafkaConsumer.stop,
        retry,
    )
    try:
        assigned = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(assigned)
        latest = await consumer.end_offsets(assigned)
        ends = {tp.partition: starts.get(tp.partition, latest[tp]) for tp in assigned}
        for tp in assigned:
            consumer.seek(tp, ends[tp.partition])
        keys: list[bytes | None] = []
        values: list[bytes] = []
        owners: list[int] = []
        loop = asyncio.get_running_loop()
        progressed_at = loop.time()
        while behind := [
            tp
            for tp in assigned
            if consumer.highwater(tp) is None or ends[tp.partition] < consumer.highwater(tp)
        ]:
            if loop.time() - progressed_at > timeout_s:
                raise ConnectorError(
                    f"Kafka at {bootstrap}: topic {topic!r}: no record came for {timeout_s} s "
                    f"while reading partitions {[tp.partition for tp in behind]} to their end"
                )
            fetched = await consumer.getmany(*behind, timeout_ms=100)
            for tp, records in fetched.items():
                ends[tp.partition] = records[-1].offset + 1
                progressed_at = loop.time()
                if tp.partition in starts:
                    keys.extend(record.key for record in records)
                    values.extend(record.value for record in records)
                    owners.extend([tp.partition] * len(records))
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if tp.partition in starts and highwater < starts[tp.partition]:
                raise CheckpointError(
                    f"Kafka at {bootstrap}: topic {topic!r} partition {tp.partition} ends at "
                    f"offset {highwater}, before the checkpoint's {starts[tp.partition]}: it "
                    "was deleted or truncated since; start again with an empty checkpoint "
                    "directory"
                )
    except KafkaError as error:
        raise ConnectorError(
            f"Kafka at {bootstrap}: cannot read topic {topic!r}: {error}"
        ) from error
    finally:
        await consumer.stop()
    read = _identity(
        pl.Series(keys, dtype=pl.Binary), pl.Series(values, dtype=pl.Binary), np.array(owners)
    )
    return ends, read.with_columns(pl.lit(1, pl.Int64).alias(_COUNT))


def _identity(keys: pl.Series, values: pl.Series, partitions: np.ndarray) -> pl.DataFrame:
    """What makes two records the same output: partition (null for a null key), key, value."""
    return pl.DataFrame(
        {
            _PARTITION: pl.Series(partitions, dtype=pl.Int32),
            _KEY: keys.alias(_KEY),
            _VALUE: values.alias(_VALUE),
        }
    ).with_columns(
        pl.when(pl.col(_KEY).is_null()).then(None).otherwise(pl.col(_PARTITION)).alias(_PARTITION)
    )


def _text(value: str | None) -> bytes:
    return (value or "").encode()


async def _stop(producer: AIOKafkaProducer) -> None:
    await producer.stop()
