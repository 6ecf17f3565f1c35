"""Exactly-once effects with checkpoints, on a real (embedded) broker: W1 killed twice with
SIGKILL and run again equals the reference; NDJSON sinks are cut back to their checkpoint;
a crash between checkpoint and commit resumes at the checkpoint; a Kafka sink resumed twice
writes each record once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import polars as pl
import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.w1_canonical import compare, read_output_dir
from benchmarks.w1_generate import W1Message, generate
from benchmarks.w1_reference import run_reference
from engine.broker import EmbeddedBroker
from engine.connectors import NdjsonSink
from engine.connectors.base import Position, SinkPosition
from engine.connectors.kafka import KafkaSink, KafkaSource, ensure_topics, read_to_end
from engine.errors import CheckpointError, ConnectorError
from engine.runners.checkpoint import Checkpoint, CheckpointStore
from engine.spec import KafkaSourceSpec
from pipelines.w1 import TOPICS, file_sinks, w1
from tests.integration.test_kafka import SESSION_MS, committed, produce, read_topics

ROOT = Path(__file__).parents[2]
W1_KAFKA = ROOT / "pipelines" / "w1.yaml"
W1_GROUP = "conflux-w1"  # pipelines/w1.yaml's
PHASE_TIMEOUT_S = 60  # a phase takes seconds; the margin is for a loaded machine


def offsets(position: Position, topic: str) -> dict[int, int]:
    """A Kafka connector's position: the next offset of each partition of `topic`."""
    assert isinstance(position, dict), position
    return position[topic]


@pytest.fixture(scope="module")
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of W1's own: its topic names are fixed, and its Kafka form starts fresh."""
    with EmbeddedBroker() as running:
        yield running


class Feeder:
    """Produces W1 messages in waves while allowed, as a live stream would bring them."""

    def __init__(self, bootstrap: str, messages: list[W1Message], wave: int) -> None:
        self.bootstrap, self.messages, self.wave = bootstrap, messages, wave
        self.allowed = asyncio.Event()
        self.sent = 0

    async def run(self, pause_s: float) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            while self.sent < len(self.messages):
                await self.allowed.wait()
                wave = self.messages[self.sent : self.sent + self.wave]
                sends = [
                    await producer.send("w1.in", value, key=key, partition=partition)
                    for key, partition, value in wave
                ]
                await asyncio.gather(*sends)
                self.sent += len(wave)
                await asyncio.sleep(pause_s)
        finally:
            await producer.stop()


async def start_w1(bootstrap: str, workdir: Path, log: Path) -> asyncio.subprocess.Process:
    """`conflux run pipelines/w1.yaml` as its own process, as an operator would start it."""
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "engine.cli", "run", str(W1_KAFKA)),
            *("--bootstrap", bootstrap, "--stop-when-idle", "3"),
            cwd=ROOT,
            env={**os.environ, "W1_WORKDIR": str(workdir)},
            stdout=output,
            stderr=output,
        )


async def written_since(bootstrap: str, checkpoint: Checkpoint) -> int:
    """How many output records the topics hold past the checkpoint's sink positions."""
    read = await asyncio.gather(
        *(
            read_to_end(bootstrap, topic, 4, offsets(position.at, topic))
            for topic, position in checkpoint.sinks.items()
        )
    )
    return sum(records.height for _, records in read)


async def wait_for_checkpoint(
    process: asyncio.subprocess.Process,
    store: CheckpointStore,
    number: int,
    outputs_past_it_in: str | None = None,
) -> None:
    """Wait until `process` has written a checkpoint numbered `number` or later (and, given
    a broker's bootstrap in `outputs_past_it_in`, outputs past the checkpoint)."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while True:
        assert process.returncode is None, f"the run ended before checkpoint {number}"
        assert time.monotonic() < deadline, f"no checkpoint numbered {number} or later came"
        checkpoint = store.load()
        if checkpoint is not None and checkpoint.number >= number:
            if outputs_past_it_in is None:
                return
            if await written_since(outputs_past_it_in, checkpoint):
                return
        await asyncio.sleep(0.05)


def test_w1_killed_twice_and_run_again_equals_the_reference(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = fresh_broker.bootstrap
    messages = list(generate(30_000, seed=7))
    workdir, log = tmp_path / "work", tmp_path / "w1.log"
    store = CheckpointStore(workdir)

    async def scenario() -> tuple[list[int], int | None]:
        await ensure_topics(bootstrap, {"w1.in": 4})
        feeder = Feeder(bootstrap, messages, wave=500)
        feeding = asyncio.create_task(feeder.run(pause_s=0.25))
        beyond = []
        killed_at: Checkpoint | None = None
        for _ in range(2):
            # Kill until the kill leaves outputs past the last checkpoint (the run may write
            # a newer checkpoint between the look and the kill): those the next run must
            # drop when it produces them again. Every try is a kill and a restart as well.
            for _attempt in range(5):
                # A checkpointed run assigns itself w1.in's partitions: no group join, and
                # no killed member's session to wait out, so a restart reads at once.
                process = await start_w1(bootstrap, workdir, log)
                feeder.allowed.set()
                # Checkpoint 0 is written before any input: the kill comes after a later one.
                after = 1 if killed_at is None else killed_at.number + 2
                await wait_for_checkpoint(process, store, after, outputs_past_it_in=bootstrap)
                process.send_signal(signal.SIGKILL)
                await process.wait()
                feeder.allowed.clear()
                killed_at = store.load()
                assert killed_at is not None
                if await written_since(bootstrap, killed_at):
                    break
            beyond.append(await written_since(bootstrap, killed_at))
            # committed offsets never run ahead of the checkpoint
            commits = await committed(bootstrap, W1_GROUP, "w1.in", 4)
            for partition, offset in enumerate(commits):
                if offset is not None:
                    assert offset <= offsets(killed_at.source, "w1.in")[partition]
        feeder.allowed.set()
        process = await start_w1(bootstrap, workdir, log)
        await asyncio.wait_for(feeding, PHASE_TIMEOUT_S)
        returncode = await asyncio.wait_for(process.wait(), PHASE_TIMEOUT_S)
        return beyond, returncode

    beyond, returncode = asyncio.run(scenario())
    assert returncode == 0, log.read_text()
    records = asyncio.run(read_topics(bootstrap, TOPICS))
    actual = {topic: [record.value for record in records[topic]] for topic in TOPICS}
    assert compare(run_reference(messages), actual) == []
    assert all(actual[topic] for topic in TOPICS), "every W1 topic has outputs on this input"
    # each restart had outputs to drop, as they were written after its checkpoint
    assert all(count > 0 for count in beyond), beyond
    final = store.load()
    assert final is not None
    final_offsets = offsets(final.source, "w1.in")
    assert asyncio.run(committed(bootstrap, W1_GROUP, "w1.in", 4)) == [
        final_offsets[partition] for partition in range(4)
    ]


class CrashingSink(NdjsonSink):
    """An NDJSON sink whose process dies just after its `crash_at`-th write returned."""

    def __init__(self, path: str | Path, crash_at: int) -> None:
        super().__init__(path)
        self.crash_at = crash_at
        self.writes = 0

    async def write(self, frame: pl.DataFrame) -> None:
        await super().write(frame)
        self.writes += 1
        if self.writes == self.crash_at:
            raise ConnectorError("crashed")


class CrashingSource(KafkaSource):
    """A Kafka source whose process dies in its `crash_at`-th commit: just after the
    runner wrote a checkpoint, before the group's offsets caught up with it. It reads every
    partition by itself, as the source a checkpointed run opens (`open_source`)."""

    def __init__(self, spec: KafkaSourceSpec, crash_at: int) -> None:
        super().__init__(
            spec.bootstrap,
            spec.topic,
            spec.group,
            batch_size=spec.batch_size,
            stop_when_idle_ms=spec.stop_when_idle_ms,
            session_timeout_ms=spec.session_timeout_ms,
            partitions="all",
        )
        self.crash_at = crash_at
        self.commits = 0

    async def commit(self, position: Position | None = None) -> None:
        self.commits += 1
        if self.commits == self.crash_at:
            raise ConnectorError("crashed")
        await super().commit(position)


def w1_on_kafka(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], count: int
) -> tuple[list[W1Message], KafkaSourceSpec]:
    """`count` W1 messages in a topic of this test, and a source reading it in small batches
    (one checkpoint per batch below), so that a crash lands in the middle of the input."""
    topic = topic_factory("in")
    messages = list(generate(count, seed=3))
    asyncio.run(produce(broker.bootstrap, topic, messages, partitions=4))
    source = KafkaSourceSpec(
        bootstrap=broker.bootstrap,
        topic=topic,
        group=topic_factory("group"),
        batch_size=2000,
        stop_when_idle_ms=1500,
        session_timeout_ms=SESSION_MS,
    )
    return messages, source


def test_ndjson_sinks_are_cut_back_to_their_checkpoint_on_restart(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], tmp_path: Path
) -> None:
    messages, source = w1_on_kafka(broker, topic_factory, 20_000)
    outputs, workdir = tmp_path / "out", tmp_path / "work"
    sinks = file_sinks(str(outputs))
    sinks["w1.out.eu"] = CrashingSink(outputs / "w1.out.eu.ndjson", crash_at=4)

    with pytest.raises(ConnectorError, match="crashed"):
        w1(source, sinks, partition_by_key=False).checkpoint(str(workdir), interval_ms=0).run()
    checkpoint = CheckpointStore(workdir).load()
    assert checkpoint is not None
    lengths = {topic: (outputs / f"{topic}.ndjson").stat().st_size for topic in TOPICS}
    checkpointed = {topic: checkpoint.sinks[topic].at for topic in TOPICS}
    assert lengths["w1.out.eu"] > checkpointed["w1.out.eu"]  # written, then crashed
    assert all(lengths[topic] >= checkpointed[topic] for topic in TOPICS)

    pipeline = w1(source, file_sinks(str(outputs)), partition_by_key=False)
    stats = pipeline.checkpoint(str(workdir), interval_ms=0).run()

    assert stats.messages < len(messages)  # resumed, not started over
    actual = read_output_dir(outputs)
    assert compare(run_reference(messages), actual) == []
    assert all(actual[topic] for topic in TOPICS)


def test_a_crash_between_checkpoint_and_commit_resumes_at_the_checkpoint(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str], tmp_path: Path
) -> None:
    messages, source = w1_on_kafka(broker, topic_factory, 20_000)
    outputs, workdir = tmp_path / "out", tmp_path / "work"

    crashing = CrashingSource(source, crash_at=3)  # checkpoint 0, then one per batch
    with pytest.raises(ConnectorError, match="crashed"):
        w1(crashing, file_sinks(str(outputs)), partition_by_key=False).checkpoint(
            str(workdir), interval_ms=0
        ).run()
    checkpoint = CheckpointStore(workdir).load()
    assert checkpoint is not None and checkpoint.number == 2
    # the group's offsets are behind the checkpoint: the batch after them is in the state
    behind = asyncio.run(committed(broker.bootstrap, source.group, source.topic, 4))
    ahead = offsets(checkpoint.source, source.topic)
    assert any(behind[partition] != ahead.get(partition) for partition in range(4))

    pipeline = w1(source, file_sinks(str(outputs)), partition_by_key=False)
    pipeline.checkpoint(str(workdir), interval_ms=0).run()

    actual = read_output_dir(outputs)
    assert compare(run_reference(messages), actual) == []
    assert all(actual[topic] for topic in TOPICS)


def test_batches_run_while_a_checkpoint_is_saved(
    broker: EmbeddedBroker,
    topic_factory: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages, source = w1_on_kafka(broker, topic_factory, 20_000)
    outputs, workdir = tmp_path / "out", tmp_path / "work"
    watched = outputs / "w1.out.eu.ndjson"
    grew: list[bool] = []

    class SlowStore(CheckpointStore):
        """Its second save returns only once the run has written more outputs (or after
        30 s): a runner that waited for the save would never get there."""

        def save(
            self, source: Position, sinks: dict[str, SinkPosition], states: dict[str, pl.DataFrame]
        ) -> int:
            if self.load() is not None and not grew:
                size = watched.stat().st_size
                deadline = time.monotonic() + 30
                while watched.stat().st_size == size and time.monotonic() < deadline:
                    time.sleep(0.01)
                grew.append(watched.stat().st_size > size)
            return super().save(source, sinks, states)

    monkeypatch.setattr("engine.runners.local.CheckpointStore", SlowStore)
    pipeline = w1(source, file_sinks(str(outputs)), partition_by_key=False)
    pipeline.checkpoint(str(workdir), interval_ms=0).run()

    assert grew == [True]
    assert compare(run_reference(messages), read_output_dir(outputs)) == []
    checkpoint = CheckpointStore(workdir).load()
    assert checkpoint is not None
    # the last checkpoint, written at the end of the input, is what the group committed
    done = asyncio.run(committed(broker.bootstrap, source.group, source.topic, 4))
    assert done == [offsets(checkpoint.source, source.topic)[partition] for partition in range(4)]


def test_a_checkpoint_that_cannot_be_saved_fails_the_run_and_commits_nothing(
    broker: EmbeddedBroker,
    topic_factory: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, source = w1_on_kafka(broker, topic_factory, 20_000)
    outputs, workdir = tmp_path / "out", tmp_path / "work"

    class FullStore(CheckpointStore):
        """Saves the first checkpoint (at the start), then fails as a full disk would."""

        def save(
            self, source: Position, sinks: dict[str, SinkPosition], states: dict[str, pl.DataFrame]
        ) -> int:
            if self.load() is not None:
                raise CheckpointError(f"checkpoint directory {str(self.directory)!r}: disk full")
            return super().save(source, sinks, states)

    monkeypatch.setattr("engine.runners.local.CheckpointStore", FullStore)
    pipeline = w1(source, file_sinks(str(outputs)), partition_by_key=False)
    with pytest.raises(CheckpointError, match="disk full"):
        pipeline.checkpoint(str(workdir), interval_ms=0).run()

    checkpoint = CheckpointStore(workdir).load()
    assert checkpoint is not None and checkpoint.number == 0
    # nothing was read before checkpoint 0: no offset may be committed past it
    done = asyncio.run(committed(broker.bootstrap, source.group, source.topic, 4))
    assert done == [None] * 4


def test_a_kafka_sink_resumed_twice_writes_each_record_once(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic = topic_factory("out")
    keys = [f"cust-{n % 7:05d}".encode() if n % 5 else None for n in range(40)]
    values = [{"n": n % 30} for n in range(40)]  # 30 to 39 repeat 0 to 9: equal records
    rows = pl.DataFrame(
        {"_key": pl.Series(keys, dtype=pl.Binary), "n": [value["n"] for value in values]}
    )

    async def scenario() -> tuple[SinkPosition, SinkPosition]:
        first = KafkaSink(broker.bootstrap, topic)
        await first.resume(None)
        await first.write(rows[:10])
        checkpoint = await first.position()
        await first.write(rows[10:30])  # written after the checkpoint, then killed
        await first.close()

        second = KafkaSink(broker.bootstrap, topic)
        await second.resume(checkpoint)
        await second.write(rows[10:20])  # produced again: dropped
        halfway = await second.position()  # a checkpoint with 20 to 29 still unmatched
        await second.write(rows[20:25])  # dropped, then killed
        await second.close()

        third = KafkaSink(broker.bootstrap, topic)
        await third.resume(halfway)
        await third.write(rows[20:40])  # 20 to 29 dropped; 30 to 39 are new
        final = await third.position()
        await third.close()
        return halfway, final

    halfway, final = asyncio.run(scenario())
    assert halfway.unmatched is not None and halfway.unmatched["count"].sum() == 10
    assert final.unmatched is None
    records = asyncio.run(read_topics(broker.bootstrap, [topic]))[topic]
    assert Counter((record.key, orjson.loads(record.value)["n"]) for record in records) == Counter(
        zip(keys, (value["n"] for value in values), strict=True)
    )
    assert sum(offsets(final.at, topic).values()) == 40
