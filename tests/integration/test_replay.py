"""`conflux replay` on a real (embedded) broker: dead letters re-injected after a fix reach
the outputs, with their original key, partition and headers; a replay never sends the same
message round twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Literal

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.w1_canonical import canonical_lines
from benchmarks.w1_generate import generate, kafka_partition
from benchmarks.w1_reference import ROUTED_TOPICS, BadMessage, parse_event, run_reference
from engine import Pipeline
from engine.broker import EmbeddedBroker
from engine.cli import main as conflux
from engine.connectors import Sink
from engine.connectors.kafka import KafkaSource, ensure_topics
from engine.operators.decode import schema_path
from engine.replay import RawKafkaSink, Replayed, replay
from engine.spec import KafkaSinkSpec, SinkSpec
from pipelines.w1 import TOPICS, Event, w1
from tests.integration.test_kafka import SESSION_MS, bounded_source, produce, read_topics

ROUTED = tuple(ROUTED_TOPICS.values())


class EventBeforeTheFix(Event):
    """W1's schema as a buggy release had it: the `apac` region was forgotten."""

    region: Literal["eu", "us"]


def is_apac(value: bytes) -> bool:
    try:
        return parse_event(value)["region"] == "apac"
    except BadMessage:
        return False


def test_dead_letters_replayed_after_a_fix_reach_the_outputs(
    broker: EmbeddedBroker,
    topic_factory: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 3,000 messages span ~5 minutes of event time, inside dedup's 10-minute horizon, so
    # replaying the apac events after the others dedups them exactly as the reference does
    messages = list(generate(3000, seed=11))
    input_topic, group = topic_factory("in"), topic_factory("group")
    asyncio.run(produce(broker.bootstrap, input_topic, messages, partitions=4))
    sinks = {topic: topic_factory(topic) for topic in TOPICS}
    source = bounded_source(broker.bootstrap, input_topic, group)
    sink_specs: dict[str, SinkSpec | Sink] = {
        topic: KafkaSinkSpec(bootstrap=broker.bootstrap, topic=name, source_topic=input_topic)
        for topic, name in sinks.items()
    }
    fixed = w1(source, sink_specs, partition_by_key=False).spec()
    validate = msgspec.structs.replace(fixed.steps[0], schema=schema_path(EventBeforeTheFix))
    buggy = msgspec.structs.replace(fixed, steps=[validate, *fixed.steps[1:]])

    Pipeline.from_spec(buggy).run()
    dead = asyncio.run(read_topics(broker.bootstrap, [sinks["w1.dlq"]]))[sinks["w1.dlq"]]
    expected = run_reference(messages)
    apac = [value for _, _, value in messages if is_apac(value)]
    assert len(dead) == len(expected["w1.dlq"]) + len(apac)

    replay = ["replay", "--from", sinks["w1.dlq"], "--to", input_topic]
    assert conflux([*replay, "--bootstrap", broker.bootstrap, "--stop-when-idle", "1"]) == 0
    assert capsys.readouterr().out == (
        f"replayed {len(dead):,} dead letters from {sinks['w1.dlq']} to {input_topic}\n"
    )
    # the fixed release resumes the group after the messages the buggy one committed
    Pipeline.from_spec(fixed).run()

    records = asyncio.run(read_topics(broker.bootstrap, [input_topic, *sinks.values()]))
    for topic in ROUTED:
        actual = [record.value for record in records[sinks[topic]]]
        assert canonical_lines(topic, actual) == canonical_lines(topic, expected[topic])
    assert records[sinks["w1.out.apac"]], "the replayed apac events were routed"
    for record in records[sinks["w1.out.apac"]]:
        assert dict(record.headers)["replayed-from"] == sinks["w1.dlq"].encode()
    # the replayed messages: after the originals, each with its original key and partition
    originals = Counter(partition for _, partition, _ in messages)
    replayed = [r for r in records[input_topic] if r.offset >= originals[r.partition]]
    assert len(replayed) == len(dead)
    original_partition = {
        orjson.loads(letter.value)["raw"].encode(): letter.partition for letter in dead
    }
    for record in replayed:
        assert record.partition == kafka_partition(record.key) == original_partition[record.value]
    # the truly bad messages are dead-lettered again, and only they
    first_run = canonical_lines("w1.dlq", [letter.value for letter in dead])
    now = canonical_lines("w1.dlq", [letter.value for letter in records[sinks["w1.dlq"]]])
    assert now == first_run + canonical_lines("w1.dlq", expected["w1.dlq"])


def test_replay_refuses_a_record_that_is_not_a_dead_letter(
    broker: EmbeddedBroker,
    topic_factory: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_letters, target = topic_factory("dlq"), topic_factory("in")
    letter = orjson.dumps({"reason": "validate: amount: expected a number", "raw": "{}"})
    asyncio.run(produce(broker.bootstrap, dead_letters, [(b"k", 0, letter), (b"k", 0, b"[1]")], 1))

    replay = ["replay", "--from", dead_letters, "--to", target, "--bootstrap", broker.bootstrap]
    assert conflux([*replay, "--stop-when-idle", "1"]) == 2

    assert capsys.readouterr().err == (
        f"conflux: {dead_letters}[0] offset 1: not a dead letter (expected a JSON object "
        '{"reason", "raw"}): Expected `object`, got `array`\n'
    )
    assert target not in asyncio.run(topics(broker.bootstrap)), "nothing was produced"


async def topics(bootstrap: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await consumer.topics()
    finally:
        await consumer.stop()


def test_replay_keeps_own_headers_and_skips_its_own_messages_that_failed_again(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    dead_letters, target = topic_factory("dlq"), topic_factory("in")
    letter = orjson.dumps({"reason": "validate: id: missing", "raw": '{"n": 1}'})
    added = [("reason", b"id: missing"), ("stage", b"validate"), ("source.offset", b"7")]
    headers = {  # a first failure, and a message this replay sent that failed again
        b"k1": [("trace", b"t1"), *added],
        b"k2": [("trace", b"t2"), *added, ("replayed-from", b"x"), ("replay-run", b"run-1")],
    }

    async def scenario() -> Replayed:
        await ensure_topics(broker.bootstrap, {dead_letters: 1})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        for key, pairs in headers.items():
            await producer.send_and_wait(dead_letters, letter, key=key, headers=pairs)
        await producer.stop()
        source = KafkaSource(
            broker.bootstrap,
            dead_letters,
            topic_factory("group"),
            stop_when_idle_ms=1000,
            session_timeout_ms=SESSION_MS,
        )
        return await replay(source, RawKafkaSink(broker.bootstrap, target), run="run-1")

    assert asyncio.run(scenario()) == Replayed(messages=1, failed_again=1)
    [record] = asyncio.run(read_topics(broker.bootstrap, [target], quiet_s=0.5))[target]
    assert (record.key, record.value) == (b"k1", b'{"n": 1}')
    assert list(record.headers) == [
        ("trace", b"t1"),
        ("replayed-from", dead_letters.encode()),
        ("replay-run", b"run-1"),
    ]
