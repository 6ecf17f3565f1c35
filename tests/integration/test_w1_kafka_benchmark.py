"""The Kafka benchmark scripts run end to end and print rows ready for RESULTS.md."""

from __future__ import annotations

import re

import pytest

from benchmarks.kafka_floor import copies
from benchmarks.kafka_floor import main as floor
from benchmarks.w1_generate import generate
from benchmarks.w1_kafka import main as benchmark
from benchmarks.w1_load import input_frame
from engine.broker import EmbeddedBroker

FIGURE = r"[\d,]+(?:\.\d+)?"


def test_throughput_prints_a_row_with_its_command(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["throughput", "--count", "5000", "--runs", "1", "--bootstrap", broker.bootstrap]
    assert benchmark(arguments) == 0

    out = capsys.readouterr().out
    assert "output counts equal the reference's" in out
    command = re.escape(f".venv/bin/python -m benchmarks.w1_kafka {' '.join(arguments)}")
    assert re.search(
        rf"^\| 5,000 \| {FIGURE} \| {FIGURE} \| {FIGURE} \| {FIGURE} \| yes \| `{command}` \|$",
        out,
        re.MULTILINE,
    )


def test_latency_prints_percentiles_with_its_command(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["latency", "--rate", "2000", "--duration", "2", "--bootstrap", broker.bootstrap]
    assert benchmark(arguments) == 0

    out = capsys.readouterr().out
    command = re.escape(f".venv/bin/python -m benchmarks.w1_kafka {' '.join(arguments)}")
    row = re.search(
        rf"^\| ({FIGURE}) \| not measured \| 4,000 \| ({FIGURE}) \| {FIGURE} \| {FIGURE} "
        rf"\| {FIGURE} \| {FIGURE} \| `{command}` \|$",
        out,
        re.MULTILINE,
    )
    assert row is not None, out
    assert 1500 < float(row[1].replace(",", "")) < 2500  # the rate asked for, near enough
    assert int(row[2].replace(",", "")) > 2000  # about 72 % of W1's input is routed


def test_the_floor_times_every_input_directly_and_through_the_relay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = ["--rate", "2000", "--duration", "2"]
    assert floor(arguments) == 0

    out = capsys.readouterr().out
    with_an_event_id = sum(map(len, copies(input_frame(list(generate(4000, seed=42)))).values()))
    command = re.escape(f".venv/bin/python -m benchmarks.kafka_floor {' '.join(arguments)}")
    for mode in ("direct", "relay"):
        row = re.search(
            rf"^\| {mode} \| ({FIGURE}) \| ({FIGURE}) \| {FIGURE} \| {FIGURE} \| {FIGURE} "
            rf"\| {FIGURE} \| [\d,]+( → [\d,]+)* \| `{command}` \|$",
            out,
            re.MULTILINE,
        )
        assert row is not None, out
        assert 1500 < float(row[1].replace(",", "")) < 2500
        # every input that has an event id is read back once, and timed
        assert int(row[2].replace(",", "")) == with_an_event_id
