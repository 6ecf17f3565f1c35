"""Prometheus metrics of a running pipeline, served over HTTP for operators to scrape.

The figures are the runner's own (`RunStats`, and a Kafka source's lag), read when
Prometheus scrapes: nothing is counted twice, and a batch pays only a clock read (and a
Kafka source's lag, a few partitions' subtraction) for being watched. Served from a thread
of the pipeline's process by prometheus-client's own server.

- `conflux_messages_total{pipeline}`: input messages read;
- `conflux_batches_total{pipeline}`: batches run;
- `conflux_rows_written_total{pipeline, sink}`: rows each sink wrote (the dead-letter
  sink's are the pipeline's dead letters);
- `conflux_checkpoints_total{pipeline}`: checkpoints made durable;
- `conflux_stage_seconds_total{pipeline, stage}`: wall time in each stage (reading, each
  step, each sink's writes);
- `conflux_actor_cpu_seconds_total{pipeline, role}`: on Ray, the CPU time of the worker
  actors and of the sink writer (imports excluded);
- `conflux_source_lag_messages{pipeline, partition}`: records a Kafka source partition held
  past what the pipeline had taken, as of its last batch from it;
- `conflux_last_batch_timestamp_seconds{pipeline}`: when the last batch was done (Unix
  time; 0 before the first): a stalled pipeline's stops moving.

On the Ray runner the counts are the driver's, per batch written; the stage times and the
actors' CPU times are added at the end of the run; the lag is asked of the workers at each
scrape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.errors import ConfigError
from engine.runners.local import RunStats

#: Partition → records behind; a source's `lag`.
Lag = Callable[[], Mapping[int, int]]


@dataclass(eq=False)  # a registry keys its collectors by identity
class RunStatsCollector(Collector):
    """Yields a run's figures (module docstring) from `stats` at each scrape; `lag` (a Kafka
    source's) when there is one."""

    pipeline: str
    stats: RunStats
    lag: Lag | None = None

    def collect(self) -> Iterator[Metric]:
        stats, pipeline = self.stats, [self.pipeline]
        # copies: the runner's thread adds sinks and stages while this one reads
        rows_out, stage_ns = list(stats.rows_out.items()), list(stats.stage_ns.items())
        actor_cpu_ns = list(stats.actor_cpu_ns.items())
        for name, text, value in (
            ("conflux_messages", "Input messages read.", stats.messages),
            ("conflux_batches", "Batches run.", stats.batches),
            ("conflux_checkpoints", "Checkpoints made durable.", stats.checkpoints),
        ):
            counter = CounterMetricFamily(name, text, labels=["pipeline"])
            counter.add_metric(pipeline, value)
            yield counter
        rows = CounterMetricFamily(
            "conflux_rows_written", "Rows each sink wrote.", labels=["pipeline", "sink"]
        )
        for sink, count in rows_out:
            rows.add_metric([*pipeline, sink], count)
        yield rows
        stages = CounterMetricFamily(
            "conflux_stage_seconds", "Wall time in each stage.", labels=["pipeline", "stage"]
        )
        for stage, ns in stage_ns:
            stages.add_metric([*pipeline, stage], ns / 1e9)
        yield stages
        actors = CounterMetricFamily(
            "conflux_actor_cpu_seconds",
            "Ray: CPU time of the actors by role (imports excluded).",
            labels=["pipeline", "role"],
        )
        for role, ns in actor_cpu_ns:
            actors.add_metric([*pipeline, role], ns / 1e9)
        yield actors
        last = GaugeMetricFamily(
            "conflux_last_batch_timestamp_seconds",
            "When the last batch was done (Unix time; 0 before the first).",
            labels=["pipeline"],
        )
        last.add_metric(pipeline, stats.last_batch_at)
        yield last
        if self.lag is not None:
            lag = GaugeMetricFamily(
                "conflux_source_lag_messages",
                "Records a source partition holds past what the pipeline has taken.",
                labels=["pipeline", "partition"],
            )
            for partition, behind in sorted(self.lag().items()):
                lag.add_metric([*pipeline, str(partition)], behind)
            yield lag


@contextlib.contextmanager
def serve_metrics(
    pipeline: str,
    stats: RunStats,
    port: int | None,
    address: str = "127.0.0.1",
    lag: Lag | None = None,
) -> Iterator[int | None]:
    """Serve `stats` (and `lag`) at http://ADDRESS:PORT/metrics while the block runs; yields
    the port (a free one when `port` is 0), or None, serving nothing, when `port` is None.
    Raises ConfigError when the port cannot be taken."""
    if port is None:
        yield None
        return
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RunStatsCollector(pipeline, stats, lag))
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as error:
        raise ConfigError(
            f"pipeline {pipeline!r}: cannot serve metrics on {address}:{port}: {error}"
        ) from error
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
