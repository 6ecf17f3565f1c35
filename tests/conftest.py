"""Shared fixtures: W1 input generated once per session, with its reference outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.w1_generate import generate, write_ndjson
from benchmarks.w1_reference import run_reference_file


@pytest.fixture(scope="session")
def w1_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 W1 messages (seed 42) as an NDJSON file, the file form's input."""
    path = tmp_path_factory.mktemp("w1") / "in.ndjson"
    write_ndjson(generate(100_000, seed=42), path)
    return path


@pytest.fixture(scope="session")
def w1_expected(w1_input: Path) -> dict[str, list[bytes]]:
    """The plain single-threaded reference's outputs for `w1_input`."""
    return run_reference_file(w1_input)
