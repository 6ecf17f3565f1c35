"""Benchmark: the latency floor under W1's latency benchmark: the broker, the load and the
reader with no engine, and with a relay that does nothing.

    python -m benchmarks.kafka_floor [--rate 69000] [--duration 20] [--modes direct relay]

Why: `benchmarks.w1_kafka latency` times W1 from the moment an input is handed to the
producer to the moment its output is read. Part of that is not the engine's: the producer's
and the reader's round trips to the broker, and the broker's own work, on the two cores the
engine runs on. This measures that part with the same input (W1's messages, seed 42), the
same producer (a write every 5 ms) and the same reader, at the same rate, each mode on a
fresh embedded broker:

- **direct**: the reader reads the input topic itself; no engine, no second hop.
- **relay**: a separate process copies each fetched batch of the input to an output topic,
  which the reader reads: Conflux's Kafka source (batches of up to 10,000 records;
  `linger_ms` 50 and `prefetch: when_behind`, as W1's, unless `--relay-linger-ms` and
  `--relay-prefetch` say otherwise) and a raw Kafka sink, nothing between, no commits. It
  is the least any engine must do per batch: fetch, produce, wait for the acknowledgement.

Every message with an event id is timed (p50/p95/p99, and p99 per 5-second window, to see
the drift as the broker fills). Prints Markdown rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import polars as pl

from benchmarks.w1_generate import generate
from benchmarks.w1_load import (
    OutputReader,
    event_numbers,
    input_frame,
    percentiles_ms,
    produce_and_read,
)
from engine.batch import KEY, RAW
from engine.broker import EmbeddedBroker
from engine.connectors import KafkaSource
from engine.connectors.kafka import ensure_topics
from engine.replay import RawKafkaSink
from engine.spec import Prefetch

ROOT = Path(__file__).parents[1]
SEED = 42
PARTITIONS = 4  # as W1's input and output topics
INPUT, OUTPUT = "floor.in", "floor.out"
IDLE_MS = 2000  # the relay ends this long after its last input
WINDOW_S = 5.0
MODES = ("direct", "relay")


async def relay(bootstrap: str, linger_ms: int, prefetch: Prefetch) -> None:
    """Copy every batch of INPUT to OUTPUT until INPUT has been idle for IDLE_MS; print a
    JSON line once the input partitions are owned, and one at the end: batches, messages
    and the seconds spent writing (producing until acknowledged)."""
    source = KafkaSource(
        bootstrap,
        INPUT,
        "conflux-floor",
        batch_size=10_000,
        linger_ms=linger_ms,
        stop_when_idle_ms=IDLE_MS,
        session_timeout_ms=6000,
        prefetch=prefetch,
        partitions="all",
    )
    sink = RawKafkaSink(bootstrap, OUTPUT)
    await sink.start()

    async def announce() -> None:
        while not source.assignment:
            await asyncio.sleep(0.01)
        print(json.dumps({"assigned": True}), flush=True)

    announcing = asyncio.create_task(announce())
    batches, messages, writing_s = 0, 0, 0.0
    try:
        async for batch in source.batches():
            started = time.perf_counter()
            await sink.write(batch.select(KEY, RAW))
            writing_s += time.perf_counter() - started
            batches, messages = batches + 1, messages + batch.height
    finally:
        announcing.cancel()
        await sink.close()
    print(json.dumps({"batches": batches, "messages": messages, "writing_s": writing_s}))


def copies(frame: pl.DataFrame) -> dict[int, list[int]]:
    """Event number → the input indices of its copies, in order: what the reader needs to
    time a topic that holds every input once, in input order per key."""
    indices: defaultdict[int, list[int]] = defaultdict(list)
    for index, event in enumerate(event_numbers(frame.get_column(RAW)).to_list()):
        if event is not None:
            indices[event].append(index)
    return dict(indices)


async def measure(
    bootstrap: str, mode: str, frame: pl.DataFrame, rate: float, relaying: subprocess.Popen | None
) -> tuple[float, OutputReader]:
    """Produce `frame` at `rate` while reading what `mode` reads; the rate achieved and the
    reader."""
    produced_at = np.full(frame.height, np.nan)
    reader = OutputReader(
        bootstrap,
        {"copy": OUTPUT if mode == "relay" else INPUT},
        produced_at,
        copies(frame),
        keep_values=False,
        timed={"copy"},
    )
    ended = relaying.wait if relaying is not None else lambda: None
    achieved = await produce_and_read(bootstrap, INPUT, frame, rate, reader, ended)
    return achieved, reader


def run(
    mode: str, frame: pl.DataFrame, rate: float, linger_ms: int, prefetch: Prefetch
) -> tuple[float, OutputReader, dict[str, Any] | None]:
    """One mode on a fresh embedded broker (the relay's source with `linger_ms` and
    `prefetch`): the rate achieved, the reader, and the relay's report (`relay`)."""
    with EmbeddedBroker() as broker:
        asyncio.run(ensure_topics(broker.bootstrap, {INPUT: PARTITIONS, OUTPUT: PARTITIONS}))
        relaying = None
        if mode == "relay":
            relaying = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.kafka_floor",
                    "relay",
                    broker.bootstrap,
                    str(linger_ms),
                    prefetch,
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert relaying.stdout is not None
            if not relaying.stdout.readline().startswith("{"):
                raise RuntimeError(f"the relay ended early (exit code {relaying.wait()})")
        try:
            achieved, reader = asyncio.run(measure(broker.bootstrap, mode, frame, rate, relaying))
            report = None
            if relaying is not None:
                assert relaying.stdout is not None
                report = json.loads(relaying.stdout.read().splitlines()[-1])
            return achieved, reader, report
        finally:
            if relaying is not None and relaying.poll() is None:
                relaying.kill()


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["relay"]:  # (internal) the relay process
        bootstrap, linger_ms, prefetch = arguments[1:4]
        asyncio.run(relay(bootstrap, int(linger_ms), cast(Prefetch, prefetch)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=69_000.0, help="input msg/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of input")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--relay-linger-ms", type=int, default=50, help="the relay's source's linger_ms"
    )
    parser.add_argument(
        "--relay-prefetch", choices=get_args(Prefetch), default="when_behind", help="its prefetch"
    )
    args = parser.parse_args(arguments)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.kafka_floor", *arguments])
    frame = input_frame(list(generate(int(args.rate * args.duration), seed=SEED)))
    print(
        "| mode | input msg/s | timed | p50 ms | p95 ms | p99 ms | max ms | p99 per 5 s | command |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    notes = []
    for mode in args.modes:
        started = time.perf_counter()
        achieved, reader, report = run(
            mode, frame, args.rate, args.relay_linger_ms, args.relay_prefetch
        )
        if report is not None:
            batches = max(report["batches"], 1)
            notes.append(
                f"The relay: {report['batches']:,} batches of "
                f"{report['messages'] / batches:,.0f} messages; producing one until "
                f"acknowledged took {1000 * report['writing_s'] / batches:.1f} ms on average."
            )
        latencies = reader.latencies()
        if not len(latencies):
            raise RuntimeError(f"{mode}: nothing was read back (read: {reader.counts})")
        figures = percentiles_ms(latencies)
        drift = " → ".join(
            f"{percentiles_ms(window)['p99']:,.0f}"
            for _, window in reader.latencies_over_time(WINDOW_S)
            if len(window)
        )
        print(
            f"| {mode} | {achieved:,.0f} | {len(latencies):,} | {figures['p50']:,.1f} "
            f"| {figures['p95']:,.1f} | {figures['p99']:,.1f} | {figures['max']:,.1f} "
            f"| {drift} | `{command}` |",
            flush=True,
        )
        print(f"({mode}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
