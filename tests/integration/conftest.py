"""Integration fixtures: one embedded Kafka-compatible broker per test session."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from engine.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """Tansu on a free loopback port, stopped by PID when the session ends."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to this test (and to each call), so tests sharing the broker never
    see each other's records or consumer groups: `topic_factory("in")` → "test-x.in.1a2b3c"."""
    prefix = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60]
    return lambda label: f"{prefix}.{label}.{uuid.uuid4().hex[:6]}"
