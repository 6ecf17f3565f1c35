"""Kafka source and sink on a real (embedded) broker: W1 end to end, dead letters,
partitioning, connection errors and when offsets are committed."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import polars as pl
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from benchmarks.w1_canonical import compare
from benchmarks.w1_generate import generate, kafka_partition
from benchmarks.w1_reference import run_reference
from engine import Pipeline
from engine.batch import HEADER_DTYPE
from engine.broker import EmbeddedBroker, free_loopback_port
from engine.cli import main as conflux
from engine.connectors import MemorySink, Sink
from engine.connectors.kafka import KafkaSink, KafkaSource, Retry, ensure_topics
from engine.errors import ConnectorError
from engine.schema_examples import Greeting
from engine.spec import FileSinkSpec, KafkaSinkSpec, KafkaSourceSpec, Prefetch, SinkSpec
from pipelines.w1 import TOPICS, w1

W1_KAFKA = Path(__file__).parents[2] / "pipelines" / "w1.yaml"
SESSION_MS = 6000  # Tansu holds a group join for about half the session timeout
Message = tuple[bytes | None, int, bytes]


async def produce(bootstrap: str, topic: str, messages: Sequence[Message], partitions: int) -> None:
    """Write (key, partition, value) messages in order, as an independent aiokafka client."""
    await ensure_topics(bootstrap, {topic: partitions})
    by_partition: dict[int, list[Message]] = defaultdict(list)
    for message in messages:
        by_partition[message[1]].append(message)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1 << 20)
    await producer.start()
    try:
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, _, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    await (await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def bounded_source(bootstrap: str, topic: str, group: str) -> KafkaSourceSpec:
    """A source of `topic` that ends once it has seen no new record for a second."""
    return KafkaSourceSpec(
        bootstrap=bootstrap,
        topic=topic,
        group=group,
        stop_when_idle_ms=1000,
        session_timeout_ms=SESSION_MS,
    )


async def read_topics(
    bootstrap: str, topics: Sequence[str], quiet_s: float = 1.0
) -> dict[str, list[ConsumerRecord]]:
    """Every record of `topics`, read from the start until nothing new came for `quiet_s`
    (Tansu's "latest" offset is not the high watermark, so reading is how to count)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: dict[str, list[ConsumerRecord]] = {topic: [] for topic in topics}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_s:
            fetched = await consumer.getmany(timeout_ms=200)
            if fetched:
                quiet_since = time.monotonic()
            for tp, batch in fetched.items():
                records[tp.topic].extend(batch)
        return records
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int | None]:
    """The group's committed offset of each partition (None: never committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()


def test_w1_over_kafka_equals_reference(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = list(generate(20_000, seed=42))
    asyncio.run(produce(broker.bootstrap, "w1.in", messages, partitions=4))
    monkeypatch.setenv("W1_WORKDIR", str(tmp_path))

    run = ["run", str(W1_KAFKA), "--bootstrap", broker.bootstrap, "--stop-when-idle", "1.5"]
    assert conflux(run) == 0

    records = asyncio.run(read_topics(broker.bootstrap, TOPICS))
    actual = {topic: [record.value for record in records[topic]] for topic in TOPICS}
    assert compare(run_reference(messages), actual) == []
    assert all(actual[topic] for topic in TOPICS), "every W1 topic has outputs on this input"
    for topic in ("w1.out.eu", "w1.agg"):  # keyed by the event's key, on its Kafka partition
        for record in records[topic]:
            assert record.key == orjson.loads(record.value)["key"].encode()
            assert record.partition == kafka_partition(record.key)


GOOD = (
    b'{"id": "evt-000000001", "ts": 1767225600000, "source": "crm", "type": "order.placed", '
    b'"key": "cust-00001", "amount": 1.5, "region": "eu", '
    b'"attrs": {"email": "A@B.io", "tier": "gold"}}'
)
MALFORMED = {  # value → a word its dead letter's reason must hold
    GOOD[:40]: "JSON",
    b"\xff\xfe{}": "UTF-8",
    b"[1, 2]": "object",
    b"": "JSON",
    GOOD.replace(b'"id": "evt-000000001", ', b""): "id",
    GOOD.replace(b'"amount": 1.5', b'"amount": "1.50"'): "amount",
}


def test_malformed_messages_all_land_in_the_dlq_with_reasons_and_origin(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    source_topic = topic_factory("in")
    values = [GOOD, *MALFORMED, GOOD.replace(b"000000001", b"000000002")]
    # two partitions, so each dead letter's origin header is checked on both
    messages = [(f"k{index}".encode(), index % 2, value) for index, value in enumerate(values)]
    asyncio.run(produce(broker.bootstrap, source_topic, messages, partitions=2))
    sinks = {topic: topic_factory(topic) for topic in TOPICS}
    source = bounded_source(broker.bootstrap, source_topic, topic_factory("group"))
    sink_specs: dict[str, SinkSpec | Sink] = {
        topic: KafkaSinkSpec(bootstrap=broker.bootstrap, topic=name, source_topic=source_topic)
        for topic, name in sinks.items()
    }

    w1(source, sink_specs, partition_by_key=False).run()

    records = asyncio.run(read_topics(broker.bootstrap, list(sinks.values())))
    dead = records[sinks["w1.dlq"]]
    assert sorted(record.key for record in dead) == sorted(
        key for key, _, value in messages if value in MALFORMED
    )
    origin = {
        key: (partition, index // 2, value)
        for index, (key, partition, value) in enumerate(messages)
    }
    for record in dead:
        headers = {name: value.decode() for name, value in record.headers}
        partition, offset, value = origin[record.key]
        assert orjson.loads(record.value)["raw"] == value.decode("utf-8", "replace")
        assert MALFORMED[value] in headers["reason"]
        assert headers["stage"] == "validate"
        assert headers["source.topic"] == source_topic
        assert (headers["source.partition"], headers["source.offset"]) == (
            str(partition),
            str(offset),
        )
    assert len(records[sinks["w1.out.eu"]]) == 2


def test_unreachable_broker_fails_naming_the_address_after_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    retry = Retry(attempts=3, first_delay_s=0.2)
    for opening in (
        lambda: KafkaSink(address, "out", retry=retry).start(),
        lambda: anext(KafkaSource(address, "in", "group", retry=retry).batches()),
    ):
        caplog.clear()
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="engine.connectors.kafka"),
            pytest.raises(ConnectorError) as error,
        ):
            asyncio.run(opening())
        assert str(error.value).startswith(
            f"cannot reach Kafka at {address}: no connection after 3 attempts over "
        )
        assert 0.2 + 0.4 <= time.monotonic() - started < 5  # backed off 0.2 s, then 0.4 s
        assert [
            record.getMessage()
            for record in caplog.records
            if record.name == "engine.connectors.kafka"
        ] == [
            f"cannot reach Kafka at {address} (attempt 1 of 3); retrying in 0.2 s",
            f"cannot reach Kafka at {address} (attempt 2 of 3); retrying in 0.4 s",
        ]


def test_conflux_run_reports_an_unreachable_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("W1_WORKDIR", str(tmp_path))
    assert conflux(["run", str(W1_KAFKA), "--bootstrap", address]) == 2
    assert capsys.readouterr().err.startswith(
        f"conflux: cannot reach Kafka at {address}: no connection after 5 attempts over "
    )


def test_sink_partitions_keys_as_the_java_client_and_keeps_headers_and_order(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic = topic_factory("out")
    count = 2000
    keys = [f"cust-{index % 500:05d}".encode() if index % 10 else None for index in range(count)]
    frame = pl.DataFrame(
        {
            "n": range(count),
            "_key": pl.Series(keys, dtype=pl.Binary),
            "_headers": pl.Series(
                [
                    [{"key": "trace", "value": b"t%d" % n}] if n % 7 == 0 else None
                    for n in range(count)
                ],
                dtype=HEADER_DTYPE,
            ),
        }
    )

    async def write() -> None:
        sink = KafkaSink(broker.bootstrap, topic, partitions=4)
        await sink.write(frame)
        await sink.close()

    asyncio.run(write())
    records = asyncio.run(read_topics(broker.bootstrap, [topic]))[topic]
    assert sorted(orjson.loads(record.value)["n"] for record in records) == list(range(count))
    unkeyed: defaultdict[int, int] = defaultdict(int)
    for record in records:
        n = orjson.loads(record.value)["n"]
        assert record.key == keys[n]
        if record.key is None:
            unkeyed[record.partition] += 1
        else:
            assert record.partition == kafka_partition(record.key, 4)
        assert record.headers == ((("trace", b"t%d" % n),) if n % 7 == 0 else ())
    assert unkeyed == {0: 50, 1: 50, 2: 50, 3: 50}  # round robin
    for partition in range(4):
        numbers = [orjson.loads(r.value)["n"] for r in records if r.partition == partition]
        assert numbers == sorted(numbers)


def test_sinks_on_one_broker_share_a_producer_until_the_last_one_closes(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    first, second = topic_factory("first"), topic_factory("second")
    # keyed rows, a null key among them, built natively (no headers): each lands in its
    # key's partition, in order
    keys = pl.Series([f"k{n % 7}".encode() if n % 5 else None for n in range(300)], dtype=pl.Binary)
    frame = pl.DataFrame({"n": range(300), "_key": keys})

    async def write() -> None:
        one = KafkaSink(broker.bootstrap, first, partitions=4)
        other = KafkaSink(broker.bootstrap, second, partitions=4)
        await asyncio.gather(one.write(frame), other.write(frame))
        producer = one._producer
        assert producer is not None and producer is other._producer
        await one.close()
        await other.write(frame.slice(0, 10))  # still open for the sink left
        await other.close()
        assert producer._closed

    asyncio.run(write())
    written = asyncio.run(read_topics(broker.bootstrap, [first, second]))
    numbers = {topic: [orjson.loads(r.value)["n"] for r in written[topic]] for topic in written}
    assert sorted(numbers[first]) == list(range(300))
    assert sorted(numbers[second]) == sorted([*range(300), *range(10)])
    for record in written[first]:
        if record.key is not None:
            assert record.partition == kafka_partition(record.key, 4)
    for partition in range(4):
        in_partition = [
            orjson.loads(r.value)["n"] for r in written[first] if r.partition == partition
        ]
        assert in_partition == sorted(in_partition)


def test_a_failed_delivery_raises_naming_topic_and_partition() -> None:
    topic = "out"

    async def write_after_the_broker_stops() -> None:
        with EmbeddedBroker() as doomed:  # its own broker, to stop it under the sink
            address = doomed.bootstrap
            sink = KafkaSink(
                address,
                topic,
                retry=Retry(attempts=2, first_delay_s=0.1),
                request_timeout_ms=1000,
            )
            await sink.write(pl.DataFrame({"n": [1]}))
        started = time.monotonic()
        with pytest.raises(ConnectorError) as error:
            await sink.write(pl.DataFrame({"n": [2]}))
        assert time.monotonic() - started < 5
        await sink.close()
        assert re.fullmatch(
            rf"Kafka at {address}: cannot deliver 1 records to topic 'out' "
            r"partition \d: .+ \(after 2 attempts\)",
            str(error.value),
        )

    asyncio.run(write_after_the_broker_stops())


class FailingSink:
    """A sink whose broker refuses every write."""

    async def write(self, frame: pl.DataFrame) -> None:
        raise ConnectorError("sink down")

    async def close(self) -> None:
        return None


class CommitWatchingSink(MemorySink):
    """Remembers the group's committed offsets as they were when each batch arrived."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__()
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.committed_at_write: list[list[int | None]] = []

    async def write(self, frame: pl.DataFrame) -> None:
        self.committed_at_write.append(await committed(self.bootstrap, self.group, self.topic, 2))
        await super().write(frame)


def test_offsets_are_committed_only_after_outputs_are_written(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic, group = topic_factory("in"), topic_factory("group")
    messages = [(None, index % 2, b'{"text": "m%d"}' % index) for index in range(100)]
    asyncio.run(produce(broker.bootstrap, topic, messages, partitions=2))

    def run(sink: Sink) -> None:
        source = KafkaSource(
            broker.bootstrap, topic, group, stop_when_idle_ms=1000, session_timeout_ms=SESSION_MS
        )
        pipeline = Pipeline("commits").source(source).decode(Greeting)
        pipeline.output("out", sink).dead_letter("rejected", MemorySink()).run()

    with pytest.raises(ConnectorError, match="sink down"):
        run(FailingSink())
    assert asyncio.run(committed(broker.bootstrap, group, topic, 2)) == [None, None]

    # The same group reads every message again. (Slowly: Tansu numbers a new group's first
    # generation 0, for which aiokafka sends no LeaveGroup, so this join waits for the
    # failed run's session to expire.)
    watching = CommitWatchingSink(broker.bootstrap, group, topic)
    run(watching)
    assert sorted(record["text"] for record in watching.records()) == sorted(
        f"m{index}" for index in range(100)
    )
    assert watching.committed_at_write[0] == [None, None]
    assert asyncio.run(committed(broker.bootstrap, group, topic, 2)) == [50, 50]


def test_a_checkpointed_run_reads_every_partition_without_waiting_for_a_group_join(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], tmp_path: Path
) -> None:
    topic, group = topic_factory("in"), topic_factory("group")
    messages = [(None, index % 4, b'{"text": "m%d"}' % index) for index in range(100)]
    asyncio.run(produce(broker.bootstrap, topic, messages, partitions=4))
    source = bounded_source(broker.bootstrap, topic, group)
    first_batch_after: list[float] = []

    def progress(messages: int) -> None:
        if not first_batch_after:
            first_batch_after.append(time.monotonic() - started)

    out = tmp_path / "out.ndjson"
    pipeline = (
        Pipeline("assigned")
        .source(source)
        .decode(Greeting)
        .output("out", FileSinkSpec(path=str(out)))
        .dead_letter("rejected", FileSinkSpec(path=str(tmp_path / "rejected.ndjson")))
        .checkpoint(str(tmp_path / "work"), interval_ms=0)
    )
    started = time.monotonic()
    pipeline.run(progress=progress)

    # a group join would have held the first batch for about half the session timeout
    assert first_batch_after and first_batch_after[0] < SESSION_MS / 2 / 1000
    lines = [orjson.loads(line)["text"] for line in out.read_bytes().splitlines()]
    assert sorted(lines) == sorted(f"m{index}" for index in range(100))
    # offsets still go to the group, after the last checkpoint
    assert asyncio.run(committed(broker.bootstrap, group, topic, 4)) == [25, 25, 25, 25]


def test_a_checkpointed_run_beside_a_group_member_warns_that_its_commits_are_refused(
    broker: EmbeddedBroker,
    topic_factory: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, group = topic_factory("in"), topic_factory("group")
    messages = [(None, index % 2, b'{"text": "m%d"}' % index) for index in range(100)]
    asyncio.run(produce(broker.bootstrap, topic, messages, partitions=2))

    async def join_and_stop_without_leaving() -> None:
        # Tansu numbers a new group's first generation 0, for which aiokafka sends no
        # LeaveGroup: the member stays in the group, as one of a killed run would.
        member = KafkaSource(broker.bootstrap, topic, group, session_timeout_ms=SESSION_MS)
        batches = member.batches()
        await anext(batches)
        await batches.aclose()

    asyncio.run(join_and_stop_without_leaving())
    out = tmp_path / "out.ndjson"
    source = bounded_source(broker.bootstrap, topic, group)
    with caplog.at_level(logging.WARNING, logger="engine.connectors.kafka"):
        (
            Pipeline("beside")
            .source(source)
            .decode(Greeting)
            .output("out", FileSinkSpec(path=str(out)))
            .dead_letter("rejected", FileSinkSpec(path=str(tmp_path / "rejected.ndjson")))
            .checkpoint(str(tmp_path / "work"), interval_ms=0)
            .run()
        )

    lines = [orjson.loads(line)["text"] for line in out.read_bytes().splitlines()]
    assert sorted(lines) == sorted(f"m{index}" for index in range(100))
    assert [
        record.getMessage() for record in caplog.records if record.name == "engine.connectors.kafka"
    ] == [
        f"Kafka at {broker.bootstrap}: group {group!r} has members, so it refuses the offsets "
        f"of {topic!r} from this source, which assigns itself its partitions; they are "
        "committed once the group accepts them. Is another process reading the topic in "
        "this group?"
    ]
    assert asyncio.run(committed(broker.bootstrap, group, topic, 2)) == [None, None]


def test_a_source_of_all_partitions_fails_naming_a_missing_topic_after_backoff(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    topic = topic_factory("missing")
    source = KafkaSource(
        broker.bootstrap,
        topic,
        topic_factory("group"),
        partitions="all",
        retry=Retry(attempts=3, first_delay_s=0.2),
    )
    with (
        caplog.at_level(logging.WARNING, logger="engine.connectors.kafka"),
        pytest.raises(ConnectorError) as error,
    ):
        asyncio.run(anext(source.batches()))
    assert re.fullmatch(
        rf"Kafka at {broker.bootstrap}: topic '{topic}' does not exist \(looked 3 times over "
        r"\d+\.\d s\); a pipeline reads the partitions of its input topic, so create it first",
        str(error.value),
    )
    assert [
        record.getMessage() for record in caplog.records if record.name == "engine.connectors.kafka"
    ] == [
        f"Kafka at {broker.bootstrap}: topic {topic!r} does not exist (attempt {attempt} of 3); "
        f"looking again in {delay} s"
        for attempt, delay in ((1, 0.2), (2, 0.4))
    ]


def test_sources_start_at_a_timestamp_or_at_explicit_offsets(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic = topic_factory("in")
    asyncio.run(produce(broker.bootstrap, topic, [(None, 0, b"old")] * 5, partitions=1))
    time.sleep(0.05)
    boundary_ms = int(time.time() * 1000)
    asyncio.run(produce(broker.bootstrap, topic, [(None, 0, b"new")] * 5, partitions=1))

    async def offsets_read(start: dict[str, object]) -> list[int]:
        source = KafkaSource(
            broker.bootstrap,
            topic,
            topic_factory("group"),
            start=start,
            stop_when_idle_ms=1000,
            session_timeout_ms=SESSION_MS,
        )
        read = []
        async for frame in source.batches():
            read += frame["_offset"].to_list()
            await source.commit()
        return read

    async def both() -> list[list[int]]:  # concurrently: each waits for its group join
        return await asyncio.gather(
            offsets_read({"timestamp": boundary_ms}), offsets_read({"offsets": {0: 7}})
        )

    assert asyncio.run(both()) == [[5, 6, 7, 8, 9], [7, 8, 9]]


@pytest.mark.parametrize("prefetch", ["when_behind", "always"])
def test_a_caught_up_source_fetches_when_asked_unless_it_always_prefetches(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], prefetch: Prefetch
) -> None:
    topic = topic_factory("in")
    asyncio.run(produce(broker.bootstrap, topic, [(None, 0, b"x")] * 30, partitions=1))

    async def scenario() -> tuple[list[int], list[bool]]:
        source = KafkaSource(
            broker.bootstrap,
            topic,
            topic_factory("group"),
            batch_size=20,
            partitions=[0],
            prefetch=prefetch,
        )
        offsets: list[int] = []
        paused: list[bool] = []  # after each batch: is the partition left unfetched?
        try:
            for batch in range(3):
                if batch == 2:  # caught up: these arrive while the runner works
                    await produce(broker.bootstrap, topic, [(None, 0, b"y")] * 5, partitions=1)
                frame = None
                while frame is None:
                    frame = await source.fetch()
                offsets += frame["_offset"].to_list()
                assert source._consumer is not None  # the consumer's own pause state
                paused.append(bool(source._consumer.paused()))
        finally:
            await source.close()
        return offsets, paused

    offsets, paused = asyncio.run(scenario())
    assert offsets == list(range(35))  # full (20), short (10), then what came meanwhile
    assert paused == ([False, True, True] if prefetch == "when_behind" else [False] * 3)


def test_conflux_broker_serves_until_sigterm_then_stops_cleanly() -> None:
    command = [sys.executable, "-m", "engine.cli", "broker"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Kafka-compatible broker at 127.0.0.1:")
        address = line.rsplit(" ", 1)[1]
        asyncio.run(ensure_topics(address, {"served": 1}))  # it answers Kafka requests
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stdout.read().strip() == "broker stopped"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1)


def test_a_rebalance_hands_partitions_over_without_loss_or_duplicates(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic, group = topic_factory("in"), topic_factory("group")
    wave = [(None, index % 2, b"m") for index in range(100)]
    asyncio.run(produce(broker.bootstrap, topic, wave, partitions=2))
    read: list[tuple[int, int, int]] = []  # (partition, offset, reader)

    async def consume(reader: int, source: KafkaSource) -> None:
        async for frame in source.batches():
            await asyncio.sleep(0.3)  # a slow sink: a rebalance must wait for the commit
            read.extend((*row, reader) for row in frame.select("_partition", "_offset").rows())
            await source.commit()

    async def scenario() -> list[frozenset[int]]:
        sources = [
            KafkaSource(
                broker.bootstrap,
                topic,
                group,
                stop_when_idle_ms=3000,
                session_timeout_ms=SESSION_MS,
            )
            for _ in range(2)
        ]
        first = asyncio.create_task(consume(0, sources[0]))
        while len(read) < len(wave):
            await asyncio.sleep(0.05)
        second = asyncio.create_task(consume(1, sources[1]))  # joining makes a rebalance
        while not (sources[0].assignment and sources[1].assignment):
            await asyncio.sleep(0.05)
        owners = [source.assignment for source in sources]
        await produce(broker.bootstrap, topic, wave, partitions=2)
        await asyncio.gather(first, second)
        return owners

    owners = asyncio.run(scenario())
    assert sorted(map(sorted, owners)) == [[0], [1]]
    assert sorted(row[:2] for row in read) == [(p, offset) for p in (0, 1) for offset in range(100)]
    for partition, offset, reader in read:
        if offset >= 50:  # the second wave, read by the partition's new owner
            assert partition in owners[reader]
