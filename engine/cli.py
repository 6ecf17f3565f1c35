"""The `conflux` command: validate, plan, run and test pipelines.

    conflux validate FILE          check a YAML pipeline; errors name the field's path
    conflux plan FILE              print its stages
    conflux run FILE [--runner local|ray] [--address ADDRESS] [--workers N]
                   [--bootstrap HOST:PORT] [--stop-when-idle SECONDS]
    conflux scale NAME --workers N [--address ADDRESS]
                                   change how many workers a pipeline running on Ray uses
    conflux test FILE              run the tests kept in the pipeline's `tests:` section
    conflux broker [--port PORT]   run the embedded Kafka-compatible broker until Ctrl-C
    conflux replay --from DLQ_TOPIC --to TOPIC --bootstrap HOST:PORT [--group G]
                   [--stop-when-idle SECONDS]
                                   re-inject dead letters' original messages after a fix

Schemas named in a pipeline (`module:Struct`) are imported with the working directory and
the pipeline file's directory on the import path, as `ray job submit --working-dir .` has.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

import msgspec
import orjson

from engine.broker import EmbeddedBroker
from engine.connectors import KafkaSource, MemorySink, MemorySource
from engine.errors import ConfigError, ConfluxError
from engine.metrics import serve_metrics
from engine.pipeline import Pipeline
from engine.plan import build_plan
from engine.replay import RawKafkaSink, replay
from engine.runners.local import RunStats
from engine.spec import (
    KafkaSinkSpec,
    KafkaSourceSpec,
    PipelineSpec,
    SinkSpec,
    load_spec,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conflux", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("validate", "check a pipeline file"),
        ("plan", "print a pipeline's stages"),
        ("run", "run a pipeline"),
        ("test", "run the tests kept in a pipeline file"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("file", type=Path)
        if name == "run":
            command.add_argument(
                "--runner",
                choices=["local", "ray"],
                default="local",
                help="where to run it: local (default, in this process) or ray (actors)",
            )
            command.add_argument(
                "--address",
                help="Ray cluster to run on (--runner ray): 'auto' for the one this machine "
                "belongs to, ray://HOST:10001; default: the job's cluster, else a local one",
            )
            command.add_argument(
                "--workers",
                type=int,
                default=1,
                help="Ray worker actors (--runner ray; at most the input's partitions)",
            )
            command.add_argument(
                "--bootstrap",
                metavar="HOST:PORT",
                help="Kafka broker for every Kafka source and sink (overrides the file's)",
            )
            command.add_argument(
                "--stop-when-idle",
                type=float,
                metavar="SECONDS",
                help="end the run once a Kafka source has had no new record for this long",
            )
            command.add_argument(
                "--metrics-port",
                type=int,
                metavar="PORT",
                help="serve the run's Prometheus metrics at http://ADDRESS:PORT/metrics",
            )
            command.add_argument(
                "--metrics-address",
                default="127.0.0.1",
                metavar="ADDRESS",
                help="the address --metrics-port listens on (default: 127.0.0.1)",
            )
    scaling = commands.add_parser("scale", help="rescale a pipeline running on Ray")
    scaling.add_argument("name", help="the pipeline's name (its `name:`)")
    scaling.add_argument("--workers", type=int, required=True)
    scaling.add_argument("--address", default="auto", help="its Ray cluster (default: auto)")
    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, help="loopback port (default: a free one)")
    replaying = commands.add_parser(
        "replay", help="produce the original messages of a dead-letter topic to a topic"
    )
    replaying.add_argument("--from", dest="dead_letter_topic", required=True, metavar="DLQ_TOPIC")
    replaying.add_argument("--to", dest="topic", required=True, metavar="TOPIC")
    replaying.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    replaying.add_argument(
        "--group",
        help="consumer group keeping the replay's position in DLQ_TOPIC "
        "(default: conflux-replay.DLQ_TOPIC.TOPIC, so a second replay sends only new letters)",
    )
    replaying.add_argument(
        "--stop-when-idle",
        type=float,
        metavar="SECONDS",
        help="end once no new dead letter has arrived for this long (default: run until Ctrl-C)",
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "broker":
            return _broker(arguments.port)
        if arguments.command == "replay":
            return _replay(arguments)
        if arguments.command == "scale":
            return _scale(arguments.name, arguments.workers, arguments.address)
        sys.path[:0] = [str(Path.cwd()), str(arguments.file.resolve().parent.parent)]
        spec = load_spec(arguments.file)
        if arguments.command == "validate":
            build_plan(spec)
            print(f"{arguments.file}: ok ({len(spec.steps)} steps)")
        elif arguments.command == "plan":
            print(build_plan(spec).describe())
        elif arguments.command == "run":
            idle_ms = None if arguments.stop_when_idle is None else arguments.stop_when_idle * 1000
            spec = with_kafka_settings(spec, arguments.bootstrap, idle_ms)
            metrics = arguments.metrics_port, arguments.metrics_address
            _announce_metrics(*metrics)
            if arguments.runner == "ray":
                return _run_on_ray(spec, arguments.workers, arguments.address, *metrics)
            return _run(spec, *metrics)
        else:
            return _test(spec)
    except ConfluxError as error:
        print(f"conflux: {error}", file=sys.stderr)
        return 2
    return 0


def _announce_metrics(port: int | None, address: str) -> None:
    """Check `--metrics-port` and print where the run's metrics will be."""
    if port is None:
        return
    if not 0 < port < 65536:
        raise ConfigError(f"--metrics-port: expected a port from 1 to 65535, got {port}")
    print(f"metrics at http://{address}:{port}/metrics", flush=True)


def _run(spec: PipelineSpec, metrics_port: int | None, metrics_address: str) -> int:
    stats = Pipeline.from_spec(spec).run(metrics_port=metrics_port, metrics_address=metrics_address)
    return _report(spec, stats)


def _run_on_ray(
    spec: PipelineSpec,
    workers: int,
    address: str | None,
    metrics_port: int | None,
    metrics_address: str,
) -> int:
    from engine.runners.ray import RayRunner  # imports Ray: only when asked for

    runner = RayRunner(build_plan(spec), workers=workers, address=address)
    with serve_metrics(spec.name, runner.stats, metrics_port, metrics_address, runner.lag):
        stats = runner.run()
    status = _report(spec, stats)
    print(
        f"  on Ray: {runner.stats.checkpoints} checkpoints, {runner.rescales} rescales, "
        f"{len(runner.recovery_seconds)} recoveries"
        + "".join(f" ({seconds:.1f} s)" for seconds in runner.recovery_seconds)
    )
    return status


def _scale(name: str, workers: int, address: str) -> int:
    from engine.runners.ray import scale

    status = scale(name, workers, address)
    print(f"{name}: {status['workers']} workers over {status['partitions']} partitions")
    return 0


def _report(spec: PipelineSpec, stats: RunStats) -> int:
    rate = stats.messages / stats.wall_seconds if stats.wall_seconds else 0.0
    print(
        f"{spec.name}: {stats.messages:,} messages in {stats.wall_seconds:.2f} s "
        f"({rate:,.0f} msg/s, {stats.cpu_seconds:.2f} CPU s)"
    )
    for sink, rows in sorted(stats.rows_out.items()):
        print(f"  {sink}: {rows:,}")
    return 0


def with_kafka_settings(
    spec: PipelineSpec, bootstrap: str | None, stop_when_idle_ms: float | None = None
) -> PipelineSpec:
    """`spec` as `conflux run` runs it: `bootstrap` (when given) in every Kafka source and
    sink, `stop_when_idle_ms` (when given) on its Kafka source, and that source's topic as
    the `source_topic` (dead letters' origin) of Kafka sinks that name none."""
    source = spec.source
    if stop_when_idle_ms is not None:
        if not isinstance(source, KafkaSourceSpec):
            raise ConfigError(
                f"--stop-when-idle: expected a pipeline with a Kafka source, "
                f"got source type {type(source).__struct_config__.tag!r}"
            )
        source = msgspec.structs.replace(source, stop_when_idle_ms=max(int(stop_when_idle_ms), 1))
    if bootstrap is not None and isinstance(source, KafkaSourceSpec):
        source = msgspec.structs.replace(source, bootstrap=bootstrap)
    origin = source.topic if isinstance(source, KafkaSourceSpec) else None

    def settled(sink: SinkSpec) -> SinkSpec:
        if not isinstance(sink, KafkaSinkSpec):
            return sink
        if bootstrap is not None:
            sink = msgspec.structs.replace(sink, bootstrap=bootstrap)
        if sink.source_topic is None and origin is not None:
            sink = msgspec.structs.replace(sink, source_topic=origin)
        return sink

    return msgspec.structs.replace(
        spec, source=source, sinks={name: settled(sink) for name, sink in spec.sinks.items()}
    )


def _broker(port: int | None) -> int:
    """Run the embedded broker until SIGINT or SIGTERM, then stop it cleanly."""
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with EmbeddedBroker(port=port) as broker:
            print(f"Kafka-compatible broker at {broker.bootstrap}", flush=True)
            while not stop.wait(0.5):
                if not broker.running():
                    print("conflux: the broker exited on its own", file=sys.stderr)
                    return 1
        print("broker stopped", flush=True)
        return 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _replay(arguments: argparse.Namespace) -> int:
    """Replay DLQ_TOPIC into TOPIC from the group's position (the earliest the first time)."""
    group = arguments.group or f"conflux-replay.{arguments.dead_letter_topic}.{arguments.topic}"
    idle_s = arguments.stop_when_idle
    source = KafkaSource(
        arguments.bootstrap,
        arguments.dead_letter_topic,
        group,
        start="earliest",
        stop_when_idle_ms=None if idle_s is None else max(int(idle_s * 1000), 1),
        # Kafka's smallest allowed session; Tansu holds a group join for half of it
        session_timeout_ms=6000,
    )
    sink = RawKafkaSink(arguments.bootstrap, arguments.topic)
    replayed = asyncio.run(replay(source, sink))
    print(
        f"replayed {replayed.messages:,} dead letters from {arguments.dead_letter_topic} "
        f"to {arguments.topic}"
        + (
            f"; left out {replayed.failed_again:,} that failed again after this replay"
            if replayed.failed_again
            else ""
        )
    )
    return 0


def _test(spec: PipelineSpec) -> int:
    """Run each kept test: its input through the steps, sinks compared with `expect`."""
    failures = 0
    for test in spec.tests:
        failed = False
        sinks = {name: MemorySink() for name in spec.sinks}
        pipeline = Pipeline.from_spec(spec).source(MemorySource(test.input))
        for name, sink in sinks.items():
            pipeline.sink(name, sink)
        pipeline.run()
        for sink_name, expected in test.expect.items():
            actual = [orjson.loads(value) for value in sinks[sink_name].values()]
            if actual != expected:
                failed = True
                print(f"FAIL {test.name}: {sink_name}: expected {expected}, got {actual}")
        failures += failed
        if not failed:
            print(f"ok   {test.name}")
    print(f"{len(spec.tests) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
