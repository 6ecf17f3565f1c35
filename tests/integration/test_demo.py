"""`make demo` as a user runs it: W1 over the embedded broker, and the file form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.demo import main as demo

FIGURE = r"[\d,]+(?:\.\d+)?"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """One figure per line: rich wraps at 80 columns when not on a terminal."""
    monkeypatch.setenv("COLUMNS", "300")


def test_kafka_demo_prints_throughput_latency_and_equals_the_reference(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # its own embedded broker: the session's holds w1.in for test_kafka
    assert demo(["--count", "5000", "--rate", "5000"]) == 0

    out = capsys.readouterr().out
    assert re.search(
        rf"^throughput: {FIGURE} msg/s from the first message produced to the last output "
        rf"read \({FIGURE} s after",
        out,
        re.MULTILINE,
    )
    assert re.search(
        rf"^end-to-end latency, produced → readable, over {FIGURE} routed outputs: "
        rf"p50 {FIGURE} ms, p95 {FIGURE} ms, p99 {FIGURE} ms, max {FIGURE} ms$",
        out,
        re.MULTILINE,
    )
    assert "input: 5,000 messages produced at" in out
    assert out.rstrip().endswith("correctness: every topic equals the reference")


def test_file_demo_equals_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo(["--files", "--count", "5000", "--out", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert re.search(rf"^throughput: {FIGURE} msg/s \(5,000 messages in", out, re.MULTILINE)
    assert out.rstrip().endswith("correctness: every topic equals the reference")
