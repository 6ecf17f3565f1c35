"""The W1 generator follows WORKLOAD.md's "Input" section, deterministically."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from benchmarks.w1_generate import (
    START_TS_MS,
    W1Message,
    generate,
    kafka_partition,
    main,
    write_ndjson,
    zipf_cdf,
)
from benchmarks.w1_reference import BadMessage, parse_event

# Java's Utils.murmur2 results, from Kafka's own UtilsTest.testMurmur2.
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.fixture(scope="module")
def messages() -> list[W1Message]:
    return list(generate(20_000, seed=42))


def first_occurrences(messages: list[W1Message]) -> list[W1Message]:
    """The messages that are not redeliveries: each value the first time it is written."""
    seen: set[bytes] = set()
    firsts = []
    for message in messages:
        if message.value not in seen:
            seen.add(message.value)
            firsts.append(message)
    return firsts


def is_bad(value: bytes) -> bool:
    try:
        parse_event(value)
    except BadMessage:
        return True
    return False


@pytest.mark.parametrize(("key", "java_hash"), KAFKA_MURMUR2.items())
def test_partition_is_the_java_clients_choice(key: bytes, java_hash: int) -> None:
    # Java: Utils.toPositive(murmur2(key)) % 4, toPositive being `& 0x7fffffff`.
    assert murmur2(key) & 0x7FFFFFFF == java_hash & 0x7FFFFFFF
    assert kafka_partition(key) == (java_hash & 0x7FFFFFFF) % 4


def test_same_seed_gives_the_same_bytes_and_a_shorter_run_is_a_prefix() -> None:
    run = list(generate(3_000, seed=7))
    assert list(generate(3_000, seed=7)) == run
    assert list(generate(1_000, seed=7)) == run[:1_000]
    assert list(generate(3_000, seed=8)) != run


def test_each_message_is_on_its_keys_kafka_partition(messages: list[W1Message]) -> None:
    assert all(m.partition == kafka_partition(m.key) for m in messages)
    assert {m.partition for m in messages} == {0, 1, 2, 3}


def test_good_values_follow_the_input_table(messages: list[W1Message]) -> None:
    good = [m for m in first_occurrences(messages) if not is_bad(m.value)]
    events = [json.loads(m.value) for m in good]
    assert all(m.key == event["key"].encode() for m, event in zip(good, events, strict=True))
    assert len({event["id"] for event in events}) == len(events)
    assert {event["source"] for event in events} == {"crm", "erp", "web"}
    assert {event["region"] for event in events} == {"eu", "us", "apac"}
    assert {event["attrs"]["tier"] for event in events} == {"gold", "silver", "bronze"}
    assert all(event["attrs"]["email"] != event["attrs"]["email"].lower() for event in events)
    # Written with a fraction, always two decimals, like 100.00 and never 100.
    assert all(re.search(rb'"amount": [0-9]+\.[0-9]{2},', m.value) for m in good)
    assert 150 < sum(len(m.value) for m in good) / len(good) < 210
    # json.dumps' default separators, so the values look like WORKLOAD.md's example.
    assert good[0].value == json.dumps(events[0]).encode()


def test_event_time_starts_at_the_epoch_and_is_ordered_per_partition(
    messages: list[W1Message],
) -> None:
    last_ts: dict[int, int] = {}
    for message in first_occurrences(messages):
        try:
            ts = json.loads(message.value)["ts"]
        except ValueError:
            continue  # cut short
        assert ts >= last_ts.get(message.partition, START_TS_MS)
        last_ts[message.partition] = ts
    first_ts = json.loads(messages[0].value)["ts"]
    assert START_TS_MS <= first_ts <= START_TS_MS + 500
    # 20,000 steps of 100 ms on average.
    assert 1_900_000 < max(last_ts.values()) - START_TS_MS < 2_100_000


def test_fault_ratios_are_five_and_one_percent(messages: list[W1Message]) -> None:
    firsts = first_occurrences(messages)
    redeliveries = len(messages) - len(firsts)
    assert 0.045 < redeliveries / len(messages) < 0.055
    bad = [m.value for m in firsts if is_bad(m.value)]
    assert 0.007 < len(bad) / len(messages) < 0.013
    kinds = Counter()
    for value in bad:
        try:
            event = json.loads(value)
        except ValueError:
            kinds["cut short"] += 1
            continue
        kinds["no id" if "id" not in event else "amount as string"] += 1
        assert isinstance(event.get("amount"), str) != ("id" not in event)
    assert kinds["cut short"] > 0.35 * len(bad)
    assert min(kinds["no id"], kinds["amount as string"]) > 0.15 * len(bad)


def test_redeliveries_copy_one_of_the_last_10000_messages(messages: list[W1Message]) -> None:
    position: dict[bytes, int] = {}
    for index, message in enumerate(messages):
        if message.value in position:
            original = messages[position[message.value]]
            assert message == original
            assert index - position[message.value] <= 10_000
        position[message.value] = index


def test_keys_are_bounded_zipf_over_100000_customers(messages: list[W1Message]) -> None:
    keys = Counter(m.key for m in first_occurrences(messages))
    share_of_top = keys[b"cust-00000"] / keys.total()
    assert share_of_top == pytest.approx(zipf_cdf()[0], abs=0.01)
    assert keys[b"cust-00000"] > keys[b"cust-00001"] > keys[b"cust-00009"]
    assert all(re.fullmatch(rb"cust-[0-9]{5}", key) for key in keys)


def test_cli_writes_one_value_per_line(tmp_path: Path) -> None:
    out = tmp_path / "in.ndjson"
    main(["--count", "500", "--seed", "3", "--ts-step-ms", "10", "--out", str(out)])
    expected = [m.value for m in generate(500, seed=3, ts_step_ms=10)]
    assert out.read_bytes().split(b"\n") == [*expected, b""]
    assert write_ndjson(generate(500, seed=3, ts_step_ms=10), tmp_path / "again.ndjson") == 500
    assert (tmp_path / "again.ndjson").read_bytes() == out.read_bytes()


def test_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError, match="count: expected 0 to 1000000000, got -1"):
        list(generate(-1))
