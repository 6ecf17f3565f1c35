"""`make demo`: W1 end to end over Kafka, timed and checked against the reference.

    python -m engine.demo [--count N] [--rate MSG_PER_S] [--bootstrap HOST:PORT]
    python -m engine.demo --files [--count N] [--out DIR]

Starts the embedded broker (or uses your cluster: `--bootstrap`), creates W1's topics if
missing, and runs the W1 Kafka pipeline (`pipelines/w1.yaml`, local runner, a fresh
W1_WORKDIR) in this process while a producer writes generated W1 messages to `w1.in` at a
steady rate. Topics are read from their current end, in a consumer group of the run's own,
so what an earlier run left there does not count. Then it prints throughput, end-to-end
latency (for each routed output, produce time of its input → readable in its topic) and
the correctness check: every output topic equals the plain single-threaded reference
computed from the produced messages.

`--files` runs the file form instead, with no broker: throughput and the per-stage
breakdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.w1_canonical import compare, read_output_dir
from benchmarks.w1_generate import W1Message, generate, write_ndjson
from benchmarks.w1_load import (
    Expectation,
    OutputReader,
    expect,
    input_frame,
    next_offsets,
    percentiles_ms,
    produce_steadily,
)
from benchmarks.w1_reference import run_reference_file
from engine.broker import EmbeddedBroker
from engine.cli import with_kafka_settings
from engine.connectors import KafkaSource, open_source
from engine.connectors.kafka import ensure_topics
from engine.pipeline import Pipeline
from engine.runners.local import RunStats
from engine.spec import FileSourceSpec, StartAt, load_spec
from pipelines.w1 import TOPICS, file_sinks, w1

W1_KAFKA = Path(__file__).parents[1] / "pipelines" / "w1.yaml"
INPUT_TOPIC = "w1.in"
PARTITIONS = 4
SEED = 7
# the pipeline ends this long after the last input: every output is written by then
IDLE_MS = 1500
PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--count",
        type=int,
        help="W1 messages to generate (default: 200,000; 300,000 with --files)",
    )
    parser.add_argument(
        "--rate", type=float, default=20_000, help="messages/s the producer writes (Kafka form)"
    )
    parser.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="your Kafka cluster instead of the embedded one"
    )
    parser.add_argument("--files", action="store_true", help="the file form: no broker")
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="working directory (--files)"
    )
    arguments = parser.parse_args(argv)
    if arguments.rate <= 0:
        parser.error(f"--rate: expected messages/s > 0, got {arguments.rate:g}")
    console = Console()
    if arguments.files:
        return files_demo(arguments.count or 300_000, arguments.out, console)
    return kafka_demo(arguments.count or 200_000, arguments.rate, arguments.bootstrap, console)


# ---- Kafka form -------------------------------------------------------------------------


@dataclass
class KafkaRun:
    """What the Kafka demo saw: the engine's figures and the outputs as a user reads them."""

    stats: RunStats
    reader: OutputReader
    produced_at: np.ndarray
    produce_rate: float


def kafka_demo(count: int, rate: float, bootstrap: str | None, console: Console) -> int:
    """Run W1 over Kafka on `count` messages produced at `rate`; print figures and the check."""
    where = bootstrap or "the embedded broker"
    console.print(
        f"[bold]Conflux demo[/]: W1 over Kafka on {where}, local runner, "
        f"{count:,} messages at {rate:,.0f} msg/s"
    )
    with console.status("generating W1 input (5 % redeliveries, 1 % bad)"):
        messages = list(generate(count, seed=SEED))
    # before the run: it tells the output reader which input each routed output is from
    with console.status("computing the single-threaded reference"):
        expected = expect(messages)
    with ExitStack() as stack:
        if bootstrap is None:
            with console.status("starting the embedded broker"):
                bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        # a fresh W1_WORKDIR: the run starts from nothing, whatever an earlier run left
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="conflux-demo-"))
        stack.enter_context(_environment("W1_WORKDIR", workdir))
        run = asyncio.run(_run_over_kafka(bootstrap, messages, expected, rate, console))

    latencies = run.reader.latencies()
    first_produced, last_produced = run.produced_at[0], run.produced_at[-1]
    console.print(
        f"input: {count:,} messages produced at {run.produce_rate:,.0f} msg/s; "
        f"W1 read {run.stats.messages:,} of them"
    )
    console.print(
        f"throughput: [bold]{count / (run.reader.last_read_at - first_produced):,.0f} msg/s[/] "
        f"from the first message produced to the last output read "
        f"({run.reader.last_read_at - last_produced:.2f} s after the last message was produced; "
        f"{run.stats.cpu_seconds:.1f} CPU s in this process: engine, producer and reader)"
    )
    if len(latencies):
        figures = ", ".join(
            f"{name} {ms:,.1f} ms" for name, ms in percentiles_ms(latencies).items()
        )
        console.print(
            f"end-to-end latency, produced → readable, over {len(latencies):,} routed "
            f"outputs: [bold]{figures}[/]"
        )
    return _check(console, expected.outputs, run.reader.values)


async def _run_over_kafka(
    bootstrap: str,
    messages: list[W1Message],
    expected: Expectation,
    rate: float,
    console: Console,
) -> KafkaRun:
    """Create the topics, start W1 and the output reader, produce, and wait for the end."""
    await ensure_topics(bootstrap, dict.fromkeys((INPUT_TOPIC, *TOPICS), PARTITIONS))
    produced_at = np.full(len(messages), np.nan)
    reader = OutputReader(
        bootstrap, {topic: topic for topic in TOPICS}, produced_at, expected.routed_inputs
    )
    await reader.start()
    # A group of its own, from the input's current end: the run reads exactly the messages
    # produced below, even on a cluster whose w1.in holds earlier ones.
    spec = with_kafka_settings(load_spec(W1_KAFKA), bootstrap, IDLE_MS)
    start = StartAt(offsets=await next_offsets(bootstrap, INPUT_TOPIC))
    spec = msgspec.structs.replace(
        spec,
        source=msgspec.structs.replace(
            spec.source, group=f"conflux-demo-{uuid.uuid4().hex[:8]}", start=start
        ),
    )
    source = open_source(spec.source, checkpointed=spec.checkpoint is not None)
    assert isinstance(source, KafkaSource)
    engine = _EngineThread(Pipeline.from_spec(spec).source(source))
    frame = input_frame(messages)
    done = asyncio.Event()
    try:
        engine.start()
        with console.status("W1 is connecting to its input topic"):
            while not source.assignment:
                engine.raise_if_failed()
                await asyncio.sleep(0.05)
        reading = asyncio.create_task(reader.read_until(done))
        with Progress(*PROGRESS_COLUMNS, console=console) as progress:
            produced = progress.add_task("produced to w1.in", total=len(messages))
            processed = progress.add_task("read by W1", total=len(messages))
            outputs = progress.add_task(
                "outputs read", total=sum(map(len, expected.outputs.values()))
            )

            def show() -> None:
                progress.update(processed, completed=engine.processed)
                progress.update(outputs, completed=reader.read)

            async def keep_showing() -> None:
                while True:
                    show()
                    await asyncio.sleep(0.1)

            showing = asyncio.create_task(keep_showing())
            try:
                produce_rate = await produce_steadily(
                    bootstrap,
                    INPUT_TOPIC,
                    frame,
                    rate,
                    produced_at,
                    progress=lambda count: progress.advance(produced, count),
                )
                await asyncio.to_thread(engine.join)
                done.set()
                await reading
            finally:
                showing.cancel()
                reading.cancel()
            show()
    finally:
        await reader.stop()
    return KafkaRun(engine.result(), reader, produced_at, produce_rate)


class _EngineThread(threading.Thread):
    """Runs a pipeline on its own event loop beside the demo's; counts what it has read."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(name="w1-engine", daemon=True)
        self.pipeline = pipeline
        self.processed = 0
        self._stats: RunStats | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._stats = self.pipeline.run(progress=self._count)
        except BaseException as error:  # handed to the demo's thread by `result`
            self._error = error

    def _count(self, messages: int) -> None:
        self.processed += messages

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if not self.is_alive() and self._stats is None:
            raise RuntimeError("the W1 pipeline ended before reading anything")

    def result(self) -> RunStats:
        self.raise_if_failed()
        assert self._stats is not None
        return self._stats


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


# ---- file form --------------------------------------------------------------------------


def files_demo(count: int, out: Path, console: Console) -> int:
    """W1's file form on the local runner: throughput, per-stage breakdown, the check."""
    out.mkdir(parents=True, exist_ok=True)
    input_path = out / "w1.in.ndjson"
    output_dir = out / "engine"

    console.print(f"[bold]Conflux demo[/]: W1 on the local runner, {count:,} messages")
    with console.status("generating W1 input (5 % redeliveries, 1 % bad)"):
        write_ndjson(generate(count, seed=SEED), input_path)

    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        task = progress.add_task("running W1", total=count)
        stats = w1(
            FileSourceSpec(path=str(input_path)),
            file_sinks(str(output_dir)),
            partition_by_key=True,
        ).run(progress=lambda count: progress.advance(task, count))

    rate = stats.messages / stats.wall_seconds
    console.print(
        f"throughput: [bold]{rate:,.0f} msg/s[/] ({stats.messages:,} messages in "
        f"{stats.wall_seconds:.2f} s wall, {stats.cpu_seconds:.2f} s CPU)"
    )
    breakdown = ", ".join(f"{stage} {ns:,.0f}" for stage, ns in stats.breakdown().items())
    console.print(f"ns per message by stage: {breakdown}")

    with console.status("computing the single-threaded reference"):
        started = time.perf_counter()
        expected = run_reference_file(input_path)
        reference_seconds = time.perf_counter() - started
    console.print(
        f"(the reference took {reference_seconds:.1f} s, "
        f"{stats.wall_seconds and reference_seconds / stats.wall_seconds:.1f}× the engine's time)"
    )
    return _check(console, expected, read_output_dir(output_dir))


def _check(
    console: Console, expected: dict[str, list[bytes]], actual: dict[str, list[bytes]]
) -> int:
    """Print each topic's count beside the reference's, then whether every topic equals it."""
    table = Table(title="W1 outputs")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    table.add_column("reference", justify="right")
    for topic in TOPICS:
        table.add_row(topic, f"{len(actual[topic]):,}", f"{len(expected[topic]):,}")
    console.print(table)
    differences = compare(expected, actual)
    if differences:
        console.print("[bold red]correctness: outputs differ from the reference[/]")
        for line in differences[:20]:
            console.print(f"  {line}")
        return 1
    console.print("correctness: [bold green]every topic equals the reference[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
