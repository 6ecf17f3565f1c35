"""Benchmark: W1 Kafka → Kafka: throughput (local or Ray runner), and end-to-end latency.

    python -m benchmarks.w1_kafka throughput [--count 1000000] [--runs 3] [--bootstrap HOST:PORT]
        [--ray-workers N]
    python -m benchmarks.w1_kafka latency [--rate MSG_PER_S] [--duration 30] [--bootstrap ...]

Copy what it prints into benchmarks/RESULTS.md.

Both run `pipelines/w1.yaml` (checkpoints included, in a fresh W1_WORKDIR per run) in a
fresh engine process per run, against the embedded broker unless `--bootstrap` names one.
Every run has topics of its own (`w1.in.<tag>`, `w1.out.eu.<tag>.<run>`, ...) and a
consumer group of its own, so runs never see each other's records, on a shared cluster too.

**throughput** pre-loads `--count` generated W1 messages (seed 42) into the input topic, then
times each run from the pipeline's start until the last output is readable: the moment the
runner has the broker's acknowledgement of the last batch's outputs (`acks=all`). It reports
messages/s from the start (connecting included; W1 is checkpointed, so the engine assigns
itself every input partition instead of waiting for a consumer-group join, which Tansu holds
for half the 6 s session) and "after the join", from the moment the engine owned its input
partitions, messages per CPU-second of the engine process, and whether each topic's output
count equals the reference's. The median run is the figure.

**latency** takes `--rate`, or measures the saturation rate first (a throughput run over
`--saturation-count` messages, after the join) and uses half of it. It starts the engine,
waits until it owns its input partitions, produces at that rate for `--duration` seconds, and
times each routed output from the moment its input was handed to the producer to the moment
this process read it (`benchmarks.w1_load`); p50/p95/p99 over all routed outputs, then the
same per 5-second window of the run (Tansu's fetches get dearer as it fills: latency drifts
up during a run), and the engine's batches and time per stage.

Each mode ends with Markdown rows for benchmarks/RESULTS.md, command line included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, get_args

import msgspec
import numpy as np

from benchmarks.w1_generate import generate
from benchmarks.w1_load import (
    OutputReader,
    expect,
    input_frame,
    percentiles_ms,
    preload,
    produce_and_read,
)
from benchmarks.w1_reference import ROUTED_TOPICS, run_reference
from engine.broker import EmbeddedBroker
from engine.cli import with_kafka_settings
from engine.connectors import KafkaSource, open_source
from engine.connectors.kafka import ensure_topics
from engine.pipeline import Pipeline
from engine.spec import KafkaSinkSpec, PipelineSpec, Prefetch, SinkSpec, load_spec

ROOT = Path(__file__).parents[1]
W1_KAFKA = ROOT / "pipelines" / "w1.yaml"
SEED = 42
PARTITIONS = 4
# a run ends this long after its last input; the timings stop at the last output before
IDLE_MS = 2000
# the latency report's windows: whether latency drifts as the broker fills
LATENCY_WINDOW_S = 5.0


# ---- the engine process -----------------------------------------------------------------


def w1_spec(
    bootstrap: str,
    input_topic: str,
    output_suffix: str,
    group: str,
    prefetch: Prefetch | None = None,
) -> PipelineSpec:
    """pipelines/w1.yaml on `bootstrap`, reading `input_topic` in `group` (with `prefetch`
    unless None), writing each W1 output topic with `output_suffix` appended; it ends after
    IDLE_MS without input."""
    spec = load_spec(W1_KAFKA)
    sinks: dict[str, SinkSpec] = {}
    for name, sink in spec.sinks.items():
        assert isinstance(sink, KafkaSinkSpec), "W1's Kafka form writes only topics"
        sinks[name] = msgspec.structs.replace(sink, topic=f"{sink.topic}{output_suffix}")
    source = msgspec.structs.replace(spec.source, topic=input_topic, group=group)
    if prefetch is not None:
        source = msgspec.structs.replace(source, prefetch=prefetch)
    renamed = msgspec.structs.replace(spec, source=source, sinks=sinks)
    return with_kafka_settings(renamed, bootstrap, IDLE_MS)


def run_engine(
    bootstrap: str,
    input_topic: str,
    output_suffix: str,
    group: str,
    workers: int | None,
    prefetch: Prefetch | None = None,
) -> None:
    """Run W1 in this process (`workers`: on that many Ray workers, on a local Ray cluster);
    print a JSON line when it owns its input partitions, and one at the end: wall-clock and
    CPU seconds at the pipeline's start and when the broker had acknowledged the outputs of
    its last batch, and the run's figures. Both runners read by manual assignment (W1 is
    checkpointed: no group join); on Ray, CPU seconds are the driver's and the actors'
    (`RunStats.stage_ns`), and the partitions are owned once the actors are up."""
    spec = w1_spec(bootstrap, input_topic, output_suffix, group, prefetch)
    last_output = [0.0, 0.0]

    def progress(messages: int) -> None:
        last_output[:] = time.time(), time.process_time()

    def announce(owns: Callable[[], bool]) -> None:
        while not owns():
            time.sleep(0.01)
        print(json.dumps({"assigned_at": time.time()}), flush=True)

    if workers is None:
        started = (time.time(), time.process_time())
        source = open_source(spec.source, checkpointed=spec.checkpoint is not None)
        assert isinstance(source, KafkaSource)
        threading.Thread(
            target=announce, args=(lambda: bool(source.assignment),), daemon=True
        ).start()
        stats = Pipeline.from_spec(spec).source(source).run(progress=progress)
    else:
        from engine.runners.ray import RayRunner  # imports Ray: only when asked for
        from engine.runners.ray.cluster import connect

        connect(log_to_driver=False)  # a cluster is up before a pipeline is run on it
        started = (time.time(), time.process_time())
        runner = RayRunner(Pipeline.from_spec(spec).plan(), workers=workers, progress=progress)
        threading.Thread(
            target=announce, args=(lambda: runner.startup_seconds > 0,), daemon=True
        ).start()
        stats = runner.run()
        last_output[1] += sum(stats.actor_cpu_ns.values()) / 1e9
    report = {
        "started": started,
        "last_output": last_output,
        "messages": stats.messages,
        "batches": stats.batches,
        "checkpoints": stats.checkpoints,
        "rows_out": stats.rows_out,
        "stages": stats.breakdown(),
    }
    print(json.dumps(report), flush=True)


class Engine:
    """An engine process running W1 (`run_engine`), with a fresh W1_WORKDIR of its own."""

    def __init__(
        self,
        bootstrap: str,
        input_topic: str,
        output_suffix: str,
        workers: int | None = None,
        prefetch: Prefetch | None = None,
    ) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="conflux-bench-")
        command = [
            sys.executable,
            "-m",
            "benchmarks.w1_kafka",
            "engine",
            "--bootstrap",
            bootstrap,
            "--input-topic",
            input_topic,
            "--output-suffix",
            output_suffix,
            "--group",
            f"conflux-bench-{uuid.uuid4().hex[:8]}",
            *([] if workers is None else ["--ray-workers", str(workers)]),
            *([] if prefetch is None else ["--prefetch", prefetch]),
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "W1_WORKDIR": self._workdir.name, "PYTHONPATH": str(ROOT)},
        )
        self.report: dict[str, Any] = {}

    def wait_assigned(self) -> None:
        """Block until the engine owns its input partitions."""
        self._read_until("assigned_at")

    def result(self) -> dict[str, Any]:
        """The engine's reports, once it has exited (its input idle for IDLE_MS)."""
        try:
            self._read_until("last_output")
            if self.process.wait() != 0:
                raise RuntimeError(
                    f"the engine process failed with exit code {self.process.returncode}"
                )
        finally:
            self._workdir.cleanup()
        return self.report

    def _read_until(self, field: str) -> None:
        assert self.process.stdout is not None
        while field not in self.report:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"the engine process ended (exit code {self.process.wait()}) early"
                )
            if line.startswith("{"):
                self.report.update(json.loads(line))


# ---- throughput ---------------------------------------------------------------------------


def throughput_run(
    bootstrap: str, input_topic: str, output_suffix: str, workers: int | None
) -> dict[str, Any]:
    """One timed engine run over the pre-loaded input; its figures."""
    report = Engine(bootstrap, input_topic, output_suffix, workers).result()
    (start_wall, start_cpu), (end_wall, end_cpu) = report["started"], report["last_output"]
    messages = report["messages"]
    return {
        "messages": messages,
        "from_start": messages / (end_wall - start_wall),
        "after_join": messages / (end_wall - report["assigned_at"]),
        "per_cpu": messages / (end_cpu - start_cpu),
        "seconds": end_wall - start_wall,
        "rows_out": report["rows_out"],
        "stages": report["stages"],
    }


def throughput(
    bootstrap: str, count: int, runs: int, tag: str, workers: int | None = None
) -> tuple[list[dict], dict]:
    """Pre-load `count` messages, then `runs` engine runs over them (`workers`: on the Ray
    runner); the runs and the reference's output counts."""
    input_topic = f"w1.in.{tag}"
    print(f"generating {count:,} W1 messages (seed {SEED})", flush=True)
    messages = list(generate(count, seed=SEED))
    expected = {topic: len(values) for topic, values in run_reference(messages).items()}
    print(f"pre-loading them into {input_topic}", flush=True)
    asyncio.run(ensure_topics(bootstrap, {input_topic: PARTITIONS}))
    asyncio.run(preload(bootstrap, input_topic, input_frame(messages)))
    results = []
    for number in range(1, runs + 1):
        result = throughput_run(bootstrap, input_topic, f".{tag}.{number}", workers)
        same = counts_equal(result, expected)
        print(
            f"run {number}: {result['from_start']:,.0f} msg/s from start "
            f"({result['seconds']:.2f} s), {result['after_join']:,.0f} msg/s after the join, "
            f"{result['per_cpu']:,.0f} msg/CPU-s; output counts "
            + ("equal the reference's" if same else f"{result['rows_out']} ≠ {expected}"),
            flush=True,
        )
        results.append(result)
    return results, expected


def counts_equal(result: dict[str, Any], expected: dict[str, int]) -> bool:
    """Whether a run wrote as many records to each topic as the reference has."""
    return all(result["rows_out"].get(topic, 0) == count for topic, count in expected.items())


def print_throughput(results: list[dict], expected: dict, command: str) -> None:
    median = sorted(results, key=lambda result: result["seconds"])[len(results) // 2]
    all_equal = all(counts_equal(result, expected) for result in results)
    print(
        "\n| messages | runs: msg/s from start | median msg/s from start "
        "| median msg/s after join | msg per engine CPU-s | output counts = reference | command |"
    )
    print("| ---: | --- | ---: | ---: | ---: | --- | --- |")
    each_run = " / ".join(f"{result['from_start']:,.0f}" for result in results)
    print(
        f"| {median['messages']:,} "
        f"| {each_run} "
        f"| {statistics.median(r['from_start'] for r in results):,.0f} "
        f"| {statistics.median(r['after_join'] for r in results):,.0f} "
        f"| {median['per_cpu']:,.0f} | {'yes' if all_equal else 'NO'} | `{command}` |"
    )
    print("\n| stage | ns/message (median run) |\n| --- | ---: |")
    for stage, ns in median["stages"].items():
        print(f"| {stage} | {ns:,.0f} |")


# ---- latency ------------------------------------------------------------------------------


def latency(
    bootstrap: str, rate: float, duration_s: float, tag: str, prefetch: Prefetch | None = None
) -> dict[str, Any]:
    """Produce at `rate` for `duration_s` while W1 runs (its source's `prefetch` given, or
    pipelines/w1.yaml's); time every routed output."""
    count = int(rate * duration_s)
    input_topic = f"w1.in.{tag}.latency"
    output_suffix = f".{tag}.latency"
    print(f"generating {count:,} W1 messages (seed {SEED}) and their reference", flush=True)
    messages = list(generate(count, seed=SEED))
    expected = expect(messages)
    # built before the engine starts: it ends once idle for IDLE_MS, and framing millions
    # of messages takes seconds
    frame = input_frame(messages)
    reader = OutputReader(
        bootstrap,
        {topic: f"{topic}{output_suffix}" for topic in ROUTED_TOPICS.values()},
        np.full(count, np.nan),
        expected.routed_inputs,
        keep_values=False,
    )
    topics = [input_topic, *reader.topics.values()]
    asyncio.run(ensure_topics(bootstrap, dict.fromkeys(topics, PARTITIONS)))
    engine = Engine(bootstrap, input_topic, output_suffix, prefetch=prefetch)
    engine.wait_assigned()
    print(f"producing at {rate:,.0f} msg/s for {duration_s:g} s", flush=True)
    achieved = asyncio.run(
        produce_and_read(bootstrap, input_topic, frame, rate, reader, engine.result)
    )
    latencies = reader.latencies()
    if not len(latencies):
        raise RuntimeError(
            f"no routed output was read (read per topic: {reader.counts}, not in the "
            f"reference: {reader.unexpected}, engine: {engine.result()}): nothing to time"
        )
    report = engine.result()
    return {
        "rate": achieved,
        "messages": count,
        "outputs": len(latencies),
        "percentiles": percentiles_ms(latencies),
        "over_time": [
            (start, percentiles_ms(window))
            for start, window in reader.latencies_over_time(LATENCY_WINDOW_S)
            if len(window)
        ],
        "batches": report["batches"],
        "checkpoints": report["checkpoints"],
        "stages": report["stages"],
    }


def print_latency(result: dict[str, Any], saturation: float | None, command: str) -> None:
    figures = result["percentiles"]
    print(
        "\n| input msg/s | saturation msg/s | messages | routed outputs "
        "| p50 ms | p95 ms | p99 ms | max ms | command |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(
        f"| {result['rate']:,.0f} | {f'{saturation:,.0f}' if saturation else 'not measured'} "
        f"| {result['messages']:,} | {result['outputs']:,} | {figures['p50']:,.1f} "
        f"| {figures['p95']:,.1f} | {figures['p99']:,.1f} | {figures['max']:,.1f} | `{command}` |"
    )
    print(f"\nBy when outputs were read ({LATENCY_WINDOW_S:g} s windows):\n")
    print("| from s | p50 ms | p99 ms | max ms |\n| ---: | ---: | ---: | ---: |")
    for start, window in result["over_time"]:
        print(f"| {start:g} | {window['p50']:,.1f} | {window['p99']:,.1f} | {window['max']:,.1f} |")
    print(
        f"\nThe engine: {result['batches']:,} batches "
        f"({result['messages'] / max(result['batches'], 1):,.0f} messages each), "
        f"{result['checkpoints']:,} checkpoints; ns per input message by stage (wall time; "
        "the sinks write concurrently, so their figures overlap):\n"
    )
    print("| stage | ns/msg |\n| --- | ---: |")
    for stage, ns in result["stages"].items():
        print(f"| {stage} | {ns:,.0f} |")


# ---- command line -------------------------------------------------------------------------


@contextmanager
def broker_address(bootstrap: str | None) -> Iterator[str]:
    """`bootstrap`, or the address of an embedded broker started for the benchmark."""
    with ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        yield bootstrap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    timed = modes.add_parser("throughput", help="pre-loaded input, time to the last output")
    timed.add_argument("--count", type=int, default=1_000_000)
    timed.add_argument("--runs", type=int, default=3)
    timed.add_argument(
        "--ray-workers", type=int, help="run on the Ray runner with this many workers"
    )
    paced = modes.add_parser("latency", help="produce → readable at half the saturation rate")
    paced.add_argument("--rate", type=float, help="input msg/s (default: half the saturation)")
    paced.add_argument("--duration", type=float, default=30.0, help="seconds of input")
    paced.add_argument(
        "--saturation-count",
        type=int,
        default=300_000,
        help="messages of the throughput run that measures saturation",
    )
    prefetch = get_args(Prefetch)
    paced.add_argument("--prefetch", choices=prefetch, help="the Kafka source's (default: W1's)")
    for mode in (timed, paced):
        mode.add_argument("--bootstrap", metavar="HOST:PORT", help="default: an embedded broker")
    engine = modes.add_parser("engine", help="(internal) one engine run")
    engine.add_argument("--bootstrap", required=True)
    engine.add_argument("--input-topic", required=True)
    engine.add_argument("--output-suffix", required=True)
    engine.add_argument("--group", required=True)
    engine.add_argument("--ray-workers", type=int)
    engine.add_argument("--prefetch", choices=prefetch)
    arguments = parser.parse_args(argv)
    if arguments.mode == "engine":
        run_engine(
            arguments.bootstrap,
            arguments.input_topic,
            arguments.output_suffix,
            arguments.group,
            arguments.ray_workers,
            arguments.prefetch,
        )
        return 0
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.w1_kafka", *(argv or sys.argv[1:])])
    tag = uuid.uuid4().hex[:6]
    with broker_address(arguments.bootstrap) as bootstrap:
        if arguments.mode == "throughput":
            results, expected = throughput(
                bootstrap, arguments.count, arguments.runs, tag, arguments.ray_workers
            )
            print_throughput(results, expected, command)
            return 0 if all(counts_equal(result, expected) for result in results) else 1
        saturation = None
        rate = arguments.rate
        if rate is None:
            results, _ = throughput(bootstrap, arguments.saturation_count, 1, tag)
            saturation = results[0]["after_join"]
            rate = saturation / 2
        result = latency(bootstrap, rate, arguments.duration, tag, arguments.prefetch)
        print_latency(result, saturation, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
