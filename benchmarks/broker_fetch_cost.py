"""Benchmark: how the embedded broker's CPU grows as a topic fills, produce alone or read too.

    python -m benchmarks.broker_fetch_cost [--seconds 20] [--rate 70000] [--fetch-wait-ms 5]

Why: W1's end-to-end latency drifts up during a run at a steady input rate (see
benchmarks/RESULTS.md). This isolates the broker: it starts an embedded Tansu, produces
`--rate` messages/s of 175 bytes (W1's size, 4 partitions, a write every 5 ms), first with
nobody reading, then with one consumer reading everything as it comes (`--fetch-wait-ms`,
as the latency benchmark's reader), and prints Tansu's CPU (% of one core) per 4-second
window. A broker whose fetch cost does not depend on how much it holds stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import polars as pl
from aiokafka import AIOKafkaConsumer

from engine.batch import KEY, RAW
from engine.broker import EmbeddedBroker
from engine.connectors.kafka import ensure_topics
from engine.connectors.kafka_fetch import fetch_partitions
from engine.replay import RawKafkaSink

TICK_S = 0.005
WINDOW_S = 4.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


async def run(broker: EmbeddedBroker, topic: str, args: argparse.Namespace, read: bool) -> None:
    await ensure_topics(broker.bootstrap, {topic: 4})
    per_tick = max(1, int(args.rate * TICK_S))
    frame = pl.DataFrame(
        {
            RAW: pl.Series([b"x" * 175] * per_tick, dtype=pl.Binary),
            KEY: pl.Series([b"k%d" % n for n in range(per_tick)], dtype=pl.Binary),
        }
    )
    sink = RawKafkaSink(broker.bootstrap, topic)
    await sink.start()
    done = asyncio.Event()
    read_count = 0

    async def consume() -> None:
        nonlocal read_count
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=args.fetch_wait_ms,
        )
        await consumer.start()
        try:
            while not done.is_set():
                fetched = await fetch_partitions(consumer, 50, 50_000)
                read_count += sum(frame.height for frame, _ in (fetched or {}).values())
        finally:
            await consumer.stop()

    reading = asyncio.create_task(consume()) if read else None
    assert broker.pid is not None
    started = window_at = time.monotonic()
    cpu_at = cpu_seconds(broker.pid)
    written = 0
    while time.monotonic() - started < args.seconds:
        await sink.write(frame)
        written += frame.height
        await asyncio.sleep(TICK_S)
        if (now := time.monotonic()) - window_at >= WINDOW_S:
            cpu = cpu_seconds(broker.pid)
            print(
                f"| {'produce + read' if read else 'produce only'} | {now - started:4.0f} "
                f"| {written:,} | {100 * (cpu - cpu_at) / (now - window_at):.0f} % |",
                flush=True,
            )
            window_at, cpu_at = now, cpu
    done.set()
    if reading is not None:
        await reading
    await sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=70_000.0, help="messages/s produced")
    parser.add_argument("--fetch-wait-ms", type=int, default=5)
    args = parser.parse_args()
    print("| run | at s | messages in the topic | Tansu CPU |\n| --- | ---: | ---: | ---: |")
    for read in (False, True):
        with EmbeddedBroker() as broker:  # a fresh, empty broker for each
            asyncio.run(run(broker, "fetch-cost", args, read))


if __name__ == "__main__":
    main()
