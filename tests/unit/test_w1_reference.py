"""The W1 reference pipeline and canonical comparison follow WORKLOAD.md rule by rule."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from benchmarks.w1_canonical import canonical_lines, compare, read_output_dir
from benchmarks.w1_canonical import main as compare_main
from benchmarks.w1_generate import generate, kafka_partition, write_ndjson
from benchmarks.w1_reference import (
    TOPICS,
    run_reference,
    run_reference_file,
    write_output_dir,
)
from benchmarks.w1_reference import main as reference_main


def event(**fields: Any) -> dict[str, Any]:
    """A valid W1 event on window [1000, 2000), with `fields` replaced or added."""
    return {
        "id": "evt-000000001",
        "ts": 1_100,
        "source": "crm",
        "type": "order.placed",
        "key": "cust-00001",
        "amount": 1.5,
        "region": "eu",
        "attrs": {"email": "User1@Example.io", "tier": "gold"},
        **fields,
    }


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def run(*values: bytes, partition: int = 0) -> dict[str, list[bytes]]:
    return run_reference((b"cust-00001", partition, value) for value in values)


def decoded(values: list[bytes]) -> list[Any]:
    return [json.loads(value) for value in values]


def routed(outputs: dict[str, list[bytes]]) -> list[dict[str, Any]]:
    return decoded(outputs["w1.out.eu"] + outputs["w1.out.us"] + outputs["w1.out.apac"])


def aggregates(outputs: dict[str, list[bytes]]) -> list[tuple[str, int, int, int]]:
    return [
        (agg["key"], agg["window_start"], agg["count"], agg["sum_cents"])
        for agg in decoded(outputs["w1.agg"])
    ]


def without(field: str) -> dict[str, Any]:
    obj = event()
    del obj[field]
    return obj


def test_a_valid_event_is_transformed_and_routed_by_region() -> None:
    outputs = run(raw(event(region="apac", extra={"Nested": "Kept"}, note=None)))
    assert decoded(outputs["w1.out.apac"]) == [
        {
            **event(region="apac", extra={"Nested": "Kept"}, note=None),
            "attrs": {"email": "user1@example.io", "tier": "gold"},
            "amount_cents": 150,
        }
    ]
    assert set(outputs) == set(TOPICS)
    assert all(not outputs[topic] for topic in TOPICS if topic != "w1.out.apac")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (raw(event())[:40], "value is not valid JSON: "),
        (b"", "value is not valid JSON: "),
        (b'{"amount": NaN}', "value is not valid JSON: "),
        (b"\xff" + raw(event()), "value is not valid UTF-8: "),
        (raw(event(note="\ud800")), "value is not valid JSON: a string holds a lone surrogate"),
        (raw([event()]), "value is not a JSON object, got list"),
        (raw(without("id")), "id: missing"),
        (raw(event(id="evt-12345678")), "id: expected 'evt-' + 9 digits"),
        (raw(event(id="evt-00000000١")), "id: expected 'evt-' + 9 digits"),
        (raw(event(id=1)), "id: expected a string, got int"),
        (raw(event(ts=1100.0)), "ts: expected an integer, got float"),
        (raw(event(ts=True)), "ts: expected an integer, got bool"),
        (raw(event(ts=-1)), "ts: expected ≥ 0, got -1"),
        (raw(event(source="sap")), "source: expected one of crm, erp, web"),
        (raw(event(type=["order.placed"])), "type: expected one of contact.created"),
        (raw(event(key="cust-1")), "key: expected 'cust-' + 5 digits"),
        (raw(event(amount="1.50")), "amount: expected a number with a fraction, got str"),
        (raw(event(amount=100)), "amount: expected a number with a fraction, got int"),
        (raw(event(amount=False)), "amount: expected a number with a fraction, got bool"),
        (raw(event(amount=500.01)), "amount: expected 0 ≤ amount ≤ 500"),
        (raw(event(amount=-0.5)), "amount: expected 0 ≤ amount ≤ 500"),
        (raw(event()).replace(b"1.5", b"1e999"), "amount: expected 0 ≤ amount ≤ 500, got inf"),
        (raw(event(region="EU")), "region: expected one of eu, us, apac"),
        (raw(event(attrs=None)), "attrs: expected an object, got null"),
        (raw(event(attrs={"tier": "gold"})), "attrs.email: missing"),
        (raw(event(attrs={"email": 1, "tier": "gold"})), "attrs.email: expected a string"),
        (raw(event(attrs={"email": "a@b.c"})), "attrs.tier: missing"),
    ],
)
def test_a_bad_message_goes_to_the_dlq_only(value: bytes, reason: str) -> None:
    outputs = run(value)
    [dead_letter] = decoded(outputs["w1.dlq"])
    assert dead_letter["reason"].startswith(reason)
    assert dead_letter["raw"] == value.decode("utf-8", errors="replace")
    assert all(not outputs[topic] for topic in TOPICS if topic != "w1.dlq")


def test_every_occurrence_of_a_bad_message_is_dead_lettered() -> None:
    bad = b'{"id": "evt-\xff'
    outputs = run(bad, raw(event()), bad)
    assert [entry["raw"] for entry in decoded(outputs["w1.dlq"])] == ['{"id": "evt-\ufffd'] * 2
    assert len(routed(outputs)) == 1


def test_cancelled_orders_are_dropped_after_validation() -> None:
    outputs = run(raw(event(type="order.cancelled")), raw(event(type="order.cancelled", ts=-1)))
    assert routed(outputs) == []
    assert len(outputs["w1.dlq"]) == 1


@pytest.mark.parametrize(
    ("amount", "cents"), [(0.125, 12), (0.375, 38), (123.45, 12345), (0.29, 29), (500.0, 50000)]
)
def test_amount_cents_rounds_the_float_product_half_to_even(amount: float, cents: int) -> None:
    [transformed] = routed(run(raw(event(amount=amount))))
    assert transformed["amount_cents"] == cents
    assert transformed["amount"] == amount


def test_dedup_drops_an_id_emitted_within_ten_minutes_of_the_partitions_largest_ts() -> None:
    outputs = run(
        raw(event(id="evt-000000001", ts=0)),
        raw(event(id="evt-000000002", ts=600_000)),
        raw(event(id="evt-000000001", ts=0)),  # 0 ≥ 600,000 − 600,000: dropped
        raw(event(id="evt-000000003", ts=600_001)),
        raw(event(id="evt-000000001", ts=0)),  # 0 < 600,001 − 600,000: emitted again
        raw(event(id="evt-000000001", ts=600_001)),  # 0 is still out of the horizon
        raw(event(id="evt-000000001", ts=600_001)),  # the last emitted copy is in it
    )
    assert [(e["id"], e["ts"]) for e in routed(outputs)] == [
        ("evt-000000001", 0),
        ("evt-000000002", 600_000),
        ("evt-000000003", 600_001),
        ("evt-000000001", 0),
        ("evt-000000001", 600_001),
    ]


def test_dedups_largest_ts_includes_the_event_being_decided() -> None:
    outputs = run(raw(event(ts=0)), raw(event(ts=600_001)))
    assert [e["ts"] for e in routed(outputs)] == [0, 600_001]


def test_dedup_is_per_partition() -> None:
    outputs = run_reference([(None, 0, raw(event())), (None, 1, raw(event()))])
    assert len(routed(outputs)) == 2


def test_a_window_closes_once_the_watermark_passes_its_end() -> None:
    opening = [
        raw(event(id="evt-000000001", ts=1_100, amount=1.25)),
        raw(event(id="evt-000000002", ts=1_999, amount=2.5)),
        raw(event(id="evt-000000003", ts=1_500, key="cust-00002")),
    ]
    # Watermark 2,999 − 1,000 = 1,999: [1000, 2000) stays open.
    assert run(*opening, raw(event(id="evt-000000004", ts=2_999)))["w1.agg"] == []
    outputs = run(*opening, raw(event(id="evt-000000004", ts=3_000)))
    assert decoded(outputs["w1.agg"]) == [
        {
            "key": "cust-00001",
            "window_start": 1_000,
            "window_end": 2_000,
            "count": 2,
            "sum_cents": 375,
        },
        {
            "key": "cust-00002",
            "window_start": 1_000,
            "window_end": 2_000,
            "count": 1,
            "sum_cents": 150,
        },
    ]


def test_a_late_event_is_routed_and_goes_to_late_but_is_not_counted() -> None:
    outputs = run(
        raw(event(id="evt-000000001", ts=1_100)),
        raw(event(id="evt-000000002", ts=3_000)),  # watermark 2,000 closes [1000, 2000)
        raw(event(id="evt-000000003", ts=1_999, amount=9.0)),  # window closed: late
        raw(event(id="evt-000000004", ts=2_000, amount=9.0)),  # [2000, 3000) is open
        raw(event(id="evt-000000005", ts=500, key="cust-00002")),  # never-opened window
        raw(event(id="evt-000000006", ts=4_001)),  # watermark 3,001 closes [2000, 3000)
    )
    assert [e["id"] for e in decoded(outputs["w1.late"])] == ["evt-000000003", "evt-000000005"]
    assert [e["id"] for e in routed(outputs)] == [f"evt-00000000{n}" for n in range(1, 7)]
    assert aggregates(outputs) == [("cust-00001", 1_000, 1, 150), ("cust-00001", 2_000, 1, 900)]


def test_the_watermark_is_per_partition() -> None:
    outputs = run_reference(
        [
            (None, 0, raw(event(id="evt-000000001", ts=1_100))),
            (None, 1, raw(event(id="evt-000000002", ts=9_000))),
            (None, 0, raw(event(id="evt-000000003", ts=1_200))),  # not late on partition 0
        ]
    )
    assert decoded(outputs["w1.late"]) == []
    assert aggregates(outputs) == []


def test_open_windows_are_not_flushed_at_the_end_of_input() -> None:
    assert run(raw(event()))["w1.agg"] == []


def test_the_file_form_derives_partitions_from_keys(tmp_path: Path) -> None:
    keys = [f"cust-{n:05d}" for n in range(20)]
    partition_of = {key: kafka_partition(key.encode()) for key in keys}
    same = next(k for k in keys[1:] if partition_of[k] == partition_of[keys[0]])
    other = next(k for k in keys[1:] if partition_of[k] != partition_of[keys[0]])
    path = tmp_path / "in.ndjson"
    lines = [raw(event(key=key)) for key in (keys[0], same, other)]
    path.write_bytes(lines[0] + b"\r\n" + lines[1] + b"\n\n" + lines[2])
    outputs = run_reference_file(path)
    # The id repeats: dropped on the first key's partition, kept on another one.
    assert [e["key"] for e in routed(outputs)] == [keys[0], other]
    assert [entry["raw"] for entry in decoded(outputs["w1.dlq"])] == [""]


def test_the_file_form_gives_the_kafka_forms_outputs(tmp_path: Path) -> None:
    # 1 s steps: redeliveries older than the dedup horizon, re-emitted and late.
    messages = list(generate(3_000, seed=5, ts_step_ms=1_000))
    write_ndjson(messages, tmp_path / "in.ndjson")
    outputs = run_reference(messages)
    assert run_reference_file(tmp_path / "in.ndjson") == outputs
    assert all(outputs[topic] for topic in TOPICS)


def test_canonical_lines_per_topic() -> None:
    agg = b'{"window_end":2000,"sum_cents":5,"count":1,"window_start":1000,"key":"cust-00001"}'
    assert canonical_lines("w1.agg", [agg, agg]) == {"cust-00001|1000|1|5": 2}
    assert canonical_lines("w1.dlq", [b'{"reason":"x","raw":"{\\"a"}']) == {'{"a': 1}
    assert canonical_lines("w1.late", [b'{"b": {"d": 1, "c": "\\u00e9"}, "a": 1.50}']) == {
        '{"a":1.5,"b":{"c":"é","d":1}}': 1
    }
    assert canonical_lines("w1.out.eu", [b"{"]) == {"<unreadable w1.out.eu value b'{'>": 1}


def test_compare_ignores_order_and_dlq_reasons() -> None:
    expected = run_reference(generate(3_000, seed=9))
    actual = {topic: list(values) for topic, values in expected.items()}
    for values in actual.values():
        random.Random(1).shuffle(values)
    actual["w1.dlq"] = [
        json.dumps({"reason": "other words", "raw": json.loads(value)["raw"]}).encode()
        for value in actual["w1.dlq"]
    ]
    assert compare(expected, actual) == []


def test_compare_reports_counts_examples_and_duplicates() -> None:
    expected = run(raw(event(id="evt-000000001")), raw(event(id="evt-000000002", ts=3_000)))
    first, second = expected["w1.out.eu"]
    actual = {**expected, "w1.out.eu": [first, first], "w1.agg": expected["w1.agg"] * 2}
    [first_line] = canonical_lines("w1.out.eu", [first])
    [second_line] = canonical_lines("w1.out.eu", [second])
    assert compare(expected, actual) == [
        "w1.out.eu: 1 lines missing, for example:",
        f"w1.out.eu:   missing: {second_line}",
        "w1.out.eu: 1 lines extra, for example:",
        f"w1.out.eu:   extra: {first_line}",
        "w1.agg: 2 values, expected 1",
        "w1.agg: 1 lines extra, for example:",
        "w1.agg:   extra: cust-00001|1000|1|150",
        "w1.out.*: id evt-000000001 routed 2 times, expected 1",
        "w1.agg: window (cust-00001, 1000) emitted 2 times",
    ]


def test_an_id_the_reference_routes_twice_is_not_a_duplicate() -> None:
    # Dedup re-emits an id whose earlier copy fell out of the 10-minute horizon.
    expected = run(raw(event(ts=0)), raw(event(id="evt-000000002", ts=600_001)), raw(event(ts=0)))
    assert [e["id"] for e in routed(expected)].count("evt-000000001") == 2
    assert compare(expected, expected) == []


def test_output_dirs_round_trip_and_the_clis_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ndjson(generate(2_000, seed=11, ts_step_ms=1_000), tmp_path / "in.ndjson")
    reference_main([str(tmp_path / "in.ndjson"), str(tmp_path / "expected")])
    expected = read_output_dir(tmp_path / "expected")
    assert expected == run_reference_file(tmp_path / "in.ndjson")
    assert compare_main([str(tmp_path / "expected"), str(tmp_path / "expected")]) == 0
    assert capsys.readouterr().out.startswith("equal: w1.out.eu ")

    actual = dict(expected, **{"w1.late": []})
    write_output_dir(actual, tmp_path / "actual")
    (tmp_path / "actual" / "w1.dlq.ndjson").unlink()
    assert read_output_dir(tmp_path / "actual")["w1.dlq"] == []
    assert compare_main([str(tmp_path / "expected"), str(tmp_path / "actual")]) == 1
    printed = capsys.readouterr().out
    assert f"w1.dlq: 0 values, expected {len(expected['w1.dlq'])}" in printed
    assert f"w1.late: 0 values, expected {len(expected['w1.late'])}" in printed
