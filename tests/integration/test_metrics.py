"""A running pipeline's Prometheus metrics, scraped over HTTP while it runs."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Pipeline
from engine.broker import EmbeddedBroker, free_loopback_port
from engine.cli import main as conflux
from engine.connectors import MemorySink, MemorySource
from engine.connectors.kafka import KafkaSource
from engine.errors import ConfigError
from engine.schema_examples import Greeting
from tests.integration.test_kafka import SESSION_MS, produce

ORDERS = Path(__file__).parents[2] / "pipelines" / "examples" / "orders.yaml"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample at http://127.0.0.1:PORT/metrics: (name, labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class ScrapeEachBatch:
    """A progress callback that scrapes the metrics after every batch: `scraped` holds
    (messages written by then, samples)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.taken = 0
        self.scraped: list[tuple[int, Samples]] = []

    def __call__(self, messages: int) -> None:
        self.taken += messages
        self.scraped.append((self.taken, scrape(self.port)))

    def lags(self) -> list[tuple[int, dict[str, float]]]:
        """Each scrape's lag per partition, with the messages written by then."""
        return [
            (
                taken,
                {
                    dict(labels)["partition"]: value
                    for (name, labels), value in samples.items()
                    if name == "conflux_source_lag_messages"
                },
            )
            for taken, samples in self.scraped
        ]


def test_a_run_serves_its_counts_while_it_runs_and_stops_serving_at_its_end() -> None:
    port = free_loopback_port()
    values = [b'{"text": "hello %d"}' % n for n in range(250)] + [b"not json"] * 5
    watch = ScrapeEachBatch(port)

    pipeline = Pipeline("greetings").source(MemorySource(values, batch_size=100))
    pipeline = pipeline.decode(Greeting).output("out", MemorySink())
    stats = pipeline.dead_letter("rejected", MemorySink()).run(watch, metrics_port=port)
    scraped = watch.scraped

    assert [taken for taken, _ in scraped] == [100, 200, 255]
    run = (("pipeline", "greetings"),)
    for taken, samples in scraped:  # each scrape saw the batches done by then
        assert samples["conflux_messages_total", run] == taken
        assert samples["conflux_batches_total", run] == -(-taken // 100)
        assert samples["conflux_last_batch_timestamp_seconds", run] > 0
    last = scraped[-1][1]
    assert last["conflux_rows_written_total", (*run, ("sink", "out"))] == 250
    assert last["conflux_rows_written_total", (*run, ("sink", "rejected"))] == 5
    assert last["conflux_stage_seconds_total", (*run, ("stage", "read"))] > 0
    assert stats.messages == 255
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_taken_metrics_port_fails_the_run_naming_it() -> None:
    port = free_loopback_port()
    with socket.create_server(("127.0.0.1", port)):
        pipeline = Pipeline("greetings").source(MemorySource([b'{"text": "hi"}']))
        pipeline = pipeline.decode(Greeting).output("out", MemorySink())
        pipeline = pipeline.dead_letter("rejected", MemorySink())
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            pipeline.run(metrics_port=port)


def test_conflux_run_says_where_it_serves_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the example writes out/paid.ndjson and out/rejected.ndjson
    order = b'{"id": "o-1", "customer": "c1", "amount": 9.5, "status": "paid"}\n'
    (tmp_path / "orders.ndjson").write_bytes(order)
    port = free_loopback_port()
    assert conflux(["run", str(ORDERS), "--metrics-port", str(port)]) == 0
    out = capsys.readouterr().out
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    assert "paid: 1" in out

    assert conflux(["run", str(ORDERS), "--metrics-port", "70000"]) == 2
    assert "--metrics-port: expected a port from 1 to 65535, got 70000" in capsys.readouterr().err


def test_a_kafka_source_reports_how_far_behind_each_partition_is(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    topic, group = topic_factory("in"), topic_factory("group")
    messages = [(None, index % 2, b'{"text": "m%d"}' % index) for index in range(2000)]
    asyncio.run(produce(broker.bootstrap, topic, messages, partitions=2))
    port = free_loopback_port()
    watch = ScrapeEachBatch(port)

    source = KafkaSource(
        broker.bootstrap,
        topic,
        group,
        batch_size=100,
        stop_when_idle_ms=1000,
        session_timeout_ms=SESSION_MS,
        partitions="all",
    )
    pipeline = Pipeline("lagging").source(source).decode(Greeting).output("out", MemorySink())
    stats = pipeline.dead_letter("rejected", MemorySink()).run(watch, metrics_port=port)

    assert stats.messages == 2000
    # once both partitions have been read from, what is behind is what was not taken yet
    lags = watch.lags()
    both = [(taken, lag) for taken, lag in lags if lag.keys() == {"0", "1"}]
    assert both and all(2000 - sum(lag.values()) == taken for taken, lag in both)
    assert any(sum(lag.values()) > 0 for _, lag in both)  # behind while the backlog drains
    assert lags[-1][1] == {"0": 0, "1": 0}  # and caught up at the end
