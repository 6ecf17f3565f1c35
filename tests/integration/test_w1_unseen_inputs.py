"""W1 on inputs unlike our generator's: outputs still equal the reference's.

Outside checks run W1 on inputs we have not seen, so each case here varies what a valid or
bad message may look like within WORKLOAD.md: fields the schema does not name (top level and
inside `attrs`), non-ASCII and escaped text, other JSON spacing, boundary and half-way
amounts, wrong types, values that are not objects, and very dense or sparse event time.
"""

from __future__ import annotations

import json
import random

import pytest

from benchmarks.w1_canonical import compare
from benchmarks.w1_generate import generate
from benchmarks.w1_reference import run_reference
from engine.connectors import MemorySink, MemorySource
from pipelines.w1 import TOPICS, w1

_EXTRA_VALUES = [None, 1, 2.5, "x\u00e9\u4e2d", [1, {"a": None}], {"deep": {"x": [True]}}, -0.0]
_AMOUNTS = [0.0, 500.0, 500.01, -0.01, 1e2, 2.5e-1, 100, True, None, "1.5", 0.125, 1.005]
_BROKEN = ["", None, 5, "crm ", "EU", "cust-1234", "evt-00000000a", "evt-0000000001"]
_ATTRS = [None, [], "x", {"email": "a"}, {"tier": "gold"}, {"email": 5, "tier": "gold"}]
_SPACING = [(",", ":"), (" , ", " : "), (", ", ": ")]


def _vary(value: bytes, rng: random.Random) -> bytes:
    try:
        event = json.loads(value)
    except ValueError:
        return value  # cut-short values stay as they are
    roll = rng.random()
    if roll < 0.1:
        event["note"] = rng.choice(_EXTRA_VALUES)
    elif roll < 0.15 and isinstance(event.get("attrs"), dict):
        event["attrs"]["extra"] = rng.choice(["y", 3, None, {"k": "v"}])
    elif roll < 0.2 and isinstance(event.get("attrs"), dict):
        event["attrs"]["email"] = f"ÀÉÎ{event['attrs'].get('email')}\u0130"
    elif roll < 0.22:
        event["amount"] = rng.choice(_AMOUNTS)
    elif roll < 0.24:
        event["ts"] = rng.choice([0, -1, 1.0, True, None, "5"])
    elif roll < 0.26:
        event[rng.choice(["source", "type", "region", "key", "id"])] = rng.choice(_BROKEN)
    elif roll < 0.27:
        event["attrs"] = rng.choice(_ATTRS)
    elif roll < 0.28:
        event = [event]
    text = json.dumps(event, separators=rng.choice(_SPACING), ensure_ascii=rng.random() < 0.5)
    return (" " + text + "\t" if rng.random() < 0.05 else text).encode()


@pytest.mark.parametrize(("seed", "ts_step_ms"), [(1, 100.0), (2, 1.0), (3, 5000.0)])
def test_varied_inputs_equal_reference(seed: int, ts_step_ms: float) -> None:
    rng = random.Random(seed)
    values = [_vary(m.value, rng) for m in generate(20_000, seed=seed, ts_step_ms=ts_step_ms)]
    expected = run_reference([(None, None, value) for value in values])
    sinks = {topic: MemorySink() for topic in TOPICS}
    w1(MemorySource(values, batch_size=4096), sinks, partition_by_key=True).run()
    assert compare(expected, {topic: sink.values() for topic, sink in sinks.items()}) == []
    assert len(expected["w1.dlq"]) > 400, "the variations produce many bad messages"


def test_event_time_beyond_64_bits_is_dead_lettered() -> None:
    """A deliberate limit: event times are 64-bit, as in Kafka and Arrow."""
    value = json.dumps(
        {
            "id": "evt-000000001",
            "ts": 2**63,
            "source": "crm",
            "type": "order.placed",
            "key": "cust-00001",
            "amount": 1.5,
            "region": "eu",
            "attrs": {"email": "a@b.c", "tier": "gold"},
        }
    ).encode()
    sinks = {topic: MemorySink() for topic in TOPICS}
    w1(MemorySource([value]), sinks, partition_by_key=True).run()
    assert [r["reason"] for r in sinks["w1.dlq"].records()] == [
        "validate: ts: 9223372036854775808 is out of the 64-bit integer range"
    ]
