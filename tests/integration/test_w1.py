"""W1 end to end: the engine's outputs equal the reference's, in every form we ship."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.w1_canonical import compare, read_output_dir
from engine.cli import main as conflux
from engine.connectors import MemorySink, MemorySource
from pipelines.w1 import TOPICS, w1

W1_FILES = Path(__file__).parents[2] / "pipelines" / "w1_files.yaml"


def test_yaml_file_form_equals_reference(
    w1_input: Path,
    w1_expected: dict[str, list[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("W1_INPUT", str(w1_input))
    monkeypatch.setenv("W1_OUTPUT", str(tmp_path))
    assert conflux(["run", str(W1_FILES)]) == 0
    actual = read_output_dir(tmp_path)
    assert compare(w1_expected, actual) == []
    assert all(actual[topic] for topic in TOPICS), "every W1 topic has outputs on this input"


@pytest.mark.parametrize("batch_size", [10_000, 997])
def test_python_api_equals_reference_whatever_the_batch_size(
    w1_input: Path, w1_expected: dict[str, list[bytes]], batch_size: int
) -> None:
    values = w1_input.read_bytes().splitlines()
    sinks = {topic: MemorySink() for topic in TOPICS}
    w1(MemorySource(values, batch_size=batch_size), sinks, partition_by_key=True).run()
    actual = {topic: sink.values() for topic, sink in sinks.items()}
    assert compare(w1_expected, actual) == []
    assert len(actual["w1.dlq"]) == len(w1_expected["w1.dlq"]) > 0
