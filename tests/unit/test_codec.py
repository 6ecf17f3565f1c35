"""Decoding keeps every good record and dead-letters every bad one with its exact reason."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
import polars as pl
import pytest

from engine.batch import raw_batch
from engine.codec import JsonCodec, MsgpackCodec, encode_json, encode_msgpack
from engine.schema import Schema


class Attrs(msgspec.Struct):
    email: str
    tier: Literal["gold", "silver", "bronze"]


class Event(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(pattern=r"^evt-[0-9]{9}$")]
    ts: Annotated[int, msgspec.Meta(ge=0)]
    amount: Annotated[float, msgspec.Meta(ge=0, le=500)]
    region: Literal["eu", "us", "apac"]
    attrs: Attrs
    note: str | None = None


def event(**fields: Any) -> dict[str, Any]:
    """A valid event with `fields` replaced or added (a value of `...` removes the field)."""
    record = {
        "id": "evt-000000001",
        "ts": 1767225600042,
        "amount": 123.45,
        "region": "eu",
        "attrs": {"email": "User42@Example.io", "tier": "gold"},
        "note": "first",
        **fields,
    }
    return {name: value for name, value in record.items() if value is not ...}


def raw(record: Any) -> bytes:
    return orjson.dumps(record)


ATTRS = b'"attrs":{"email":"a@b.io","tier":"gold"}'

# (value, reason or None for a good value)
MIXED: list[tuple[bytes, str | None]] = [
    (raw(event()), None),
    (
        raw(event())[:40],
        "value is not valid JSON: unexpected end of data: line 1 column 41 (char 40)",
    ),
    (b"[1,2]", "value: expected a JSON object, got array"),
    (b'"evt-000000001"', "value: expected a JSON object, got str"),
    (
        b"",
        "value is not valid JSON: Input is a zero-length, empty document: line 1 column 1 (char 0)",
    ),
    (
        b'{"id":"evt-\xff"}',
        "value is not valid JSON: str is not valid UTF-8: surrogates not allowed: "
        "line 1 column 1 (char 0)",
    ),
    (raw(event(id="evt-000000002", ts="1767225600042")), "ts: expected an integer, got str"),
    (raw(event(id="evt-000000003", ts=...)), "ts: missing"),
    (
        raw(event(id="evt-000000004", attrs={"email": 7, "tier": "gold"})),
        "attrs.email: expected a string, got int",
    ),
    (
        raw(
            event(
                id="evt-000000005",
                channel={"name": "web"},
                attrs={"email": "a@b.io", "tier": "gold", "vip": True},
            )
        ),
        None,
    ),
    (raw(event(id="evt-000000006", note=None)), None),
    (
        raw(event(id="evt-000000007", amount=2)),
        "amount: expected a number with a fraction, got int",
    ),
    (raw(event(id="evt-000000008", ts=1.0)), "ts: expected an integer, got float"),
    (
        b'{"id": "evt-000000009",\n  "ts": 5,\r\n  "amount": 0.5, "region":\n"us", '
        + ATTRS
        + b', "note": "x"\n}',
        None,
    ),
    (
        b'{"id":"evt-000000010","ts":5,"amount":0.5,"region":"mars","region":"us",'
        + ATTRS
        + b',"note":"x"}',
        None,
    ),
    (
        b'{"id":"evt-000000011","ts":5,"amount":0.5,"region":"us","region":"mars",'
        + ATTRS
        + b',"note":"x"}',
        "region: 'mars' is not one of apac, eu, us",
    ),
    (raw(event(id="evt-000000012", region="EU")), "region: 'EU' is not one of apac, eu, us"),
    (raw(event(id="evt-12")), "id: 'evt-12' does not match ^evt-[0-9]{9}$"),
    (raw(event(id="evt-000000013", amount=500.01)), "amount: 500.01 is above the maximum 500"),
]


def decode_mixed() -> tuple[Any, list[bytes]]:
    values = [value for value, _ in MIXED]
    batch = raw_batch(
        values,
        keys=[f"key-{row}".encode() for row in range(len(values))],
        partitions=[row % 4 for row in range(len(values))],
        offsets=[1000 + row for row in range(len(values))],
    )
    return JsonCodec(Schema.of(Event)).decode(batch, "validate"), values


def test_good_rows_keep_their_order_and_envelope() -> None:
    decoded, _ = decode_mixed()
    good_rows = [row for row, (_, reason) in enumerate(MIXED) if reason is None]
    assert decoded.good.select("_key", "_partition", "_offset").rows() == [
        (f"key-{row}".encode(), row % 4, 1000 + row) for row in good_rows
    ]
    assert decoded.good["id"].to_list() == [
        "evt-000000001",
        "evt-000000005",
        "evt-000000006",
        "evt-000000009",
        "evt-000000010",
    ]


def test_good_rows_hold_the_values_orjson_reads() -> None:
    decoded, values = decode_mixed()
    good_values = [orjson.loads(values[row]) for row, (_, r) in enumerate(MIXED) if r is None]
    columns = ["id", "ts", "amount", "region", "attrs", "note"]
    assert decoded.good.select(columns).to_dicts() == [
        {
            **{name: value.get(name) for name in columns},
            "attrs": {"email": value["attrs"]["email"], "tier": value["attrs"]["tier"]},
        }
        for value in good_values
    ]
    # the later of two `region` members counts, as in orjson
    assert decoded.good.filter(pl.col("id") == "evt-000000010")["region"].to_list() == ["us"]


def test_bad_rows_carry_the_reason_stage_and_original_bytes() -> None:
    decoded, values = decode_mixed()
    assert decoded.bad.select(
        "_reason", "_stage", "_raw", "_key", "_partition", "_offset"
    ).rows() == [
        (reason, "validate", values[row], f"key-{row}".encode(), row % 4, 1000 + row)
        for row, (_, reason) in enumerate(MIXED)
        if reason is not None
    ]


def test_fields_the_schema_does_not_declare_are_kept_in_extra() -> None:
    decoded, _ = decode_mixed()
    extra = dict(zip(decoded.good["id"].to_list(), decoded.good["_extra"].to_list(), strict=True))
    assert orjson.loads(extra["evt-000000005"]) == {
        "channel": {"name": "web"},
        "attrs": {"vip": True},
    }
    assert orjson.loads(extra["evt-000000006"]) == {"note": None}
    assert extra["evt-000000001"] is None


def test_encode_json_gives_back_every_field_of_a_good_record() -> None:
    decoded, values = decode_mixed()
    good_values = [values[row] for row, (_, reason) in enumerate(MIXED) if reason is None]
    encoded = encode_json(decoded.good).to_list()
    assert [orjson.loads(text) for text in encoded] == [orjson.loads(v) for v in good_values]


def test_encode_json_leaves_an_absent_optional_field_absent() -> None:
    original = raw(event(note=...))
    decoded = JsonCodec(Schema.of(Event)).decode(raw_batch([original]), "validate")
    assert orjson.loads(encode_json(decoded.good)[0]) == orjson.loads(original)


def test_encode_json_keeps_an_explicit_null_and_drops_computed_nulls() -> None:
    original = raw(event(note=None))
    decoded = JsonCodec(Schema.of(Event)).decode(raw_batch([original]), "validate")
    assert orjson.loads(encode_json(decoded.good)[0]) == orjson.loads(original)
    with_missing = decoded.good.with_columns(pl.lit(None, pl.Int64).alias("cents"))
    assert "cents" not in orjson.loads(encode_json(with_missing)[0])


def test_an_all_good_batch_has_no_dead_letters() -> None:
    values = [raw(event(id=f"evt-{n:09d}", ts=n)) for n in range(5)]
    decoded = JsonCodec(Schema.of(Event)).decode(raw_batch(values), "validate")
    assert decoded.good["ts"].to_list() == [0, 1, 2, 3, 4]
    assert decoded.bad.height == 0
    assert decoded.good["_extra"].to_list() == [None] * 5


# Values a lenient columnar reader accepts but JSON (and the per-record checker) does not:
# each must still be dead-lettered, whatever else is in its batch.


class Loose(msgspec.Struct):
    """Every field optional; `code`'s pattern accepts the text of a JSON number."""

    code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")] | None = None
    kind: Literal["1", "x"] | None = None
    tags: list[str] | None = None
    scores: list[float] | None = None
    ratio: float | None = None
    note: str | None = None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(
            b"{x}",
            "value is not valid JSON: unexpected character, expected a string "
            "key: line 1 column 2 (char 1)",
            id="not JSON, all fields optional",
        ),
        pytest.param(
            b'{"code":"12"}{}',
            "value is not valid JSON: unexpected content after "
            "document: line 1 column 14 (char 13)",
            id="two objects",
        ),
        pytest.param(
            b'{"code":"1\xff"}',
            "value is not valid JSON: str is not valid UTF-8: "
            "surrogates not allowed: line 1 column 1 (char 0)",
            id="invalid UTF-8",
        ),
        pytest.param(
            b'{"note":"\\ud800"}',
            "value is not valid JSON: no low surrogate in string: line 1 column 10 (char 9)",
            id="lone surrogate",
        ),
        pytest.param(b'{"code":12}', "code: expected a string, got int", id="number as text"),
        pytest.param(b'{"kind":1}', "kind: expected one of 1, x, got int", id="literal text"),
        pytest.param(b'{"tags":["a",1]}', "tags[1]: expected a string, got int", id="list item"),
        pytest.param(
            b'{"scores":[1.5,2]}',
            "scores[1]: expected a number with a fraction, got int",
            id="integer list item",
        ),
        pytest.param(
            b'{"r\\u0061tio":2}',
            "ratio: expected a number with a fraction, got int",
            id="escaped field name",
        ),
    ],
)
def test_values_only_a_lenient_reader_accepts_are_dead_lettered(value: bytes, reason: str) -> None:
    good = b'{"code":"12","kind":"x","tags":["a"],"scores":[1.5],"ratio":0.5}'
    decoded = JsonCodec(Schema.of(Loose)).decode(raw_batch([good, value, b"{}"]), "decode")
    assert decoded.good["_offset"].to_list() == [0, 2]
    assert decoded.bad.select("_offset", "_reason").rows() == [(1, reason)]


# MessagePack


def test_msgpack_round_trip() -> None:
    records = [event(id=f"evt-{n:09d}", ts=n, note=None if n % 2 else "n") for n in range(3)]
    values = [msgspec.msgpack.encode(record) for record in records]
    codec = MsgpackCodec(Schema.of(Event))

    decoded = codec.decode(raw_batch(values, keys=[b"a", b"b", b"c"]), "decode")

    assert decoded.bad.height == 0
    assert decoded.good["_key"].to_list() == [b"a", b"b", b"c"]
    assert [msgspec.msgpack.decode(value) for value in encode_msgpack(decoded.good)] == records


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(
            msgspec.msgpack.encode(event(ts="5")),
            "Expected `int`, got `str` - at `$.ts`",
            id="wrong type",
        ),
        pytest.param(
            b"\xc1",
            "MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)",
            id="malformed",
        ),
        pytest.param(
            msgspec.msgpack.encode(event())[:10], "Input data was truncated", id="cut short"
        ),
        pytest.param(b"", "Input data was truncated", id="empty"),
        pytest.param(msgspec.msgpack.encode([1]), "Expected `object`, got `array`", id="not a map"),
    ],
)
def test_a_bad_msgpack_value_is_dead_lettered(value: bytes, reason: str) -> None:
    good = msgspec.msgpack.encode(event())
    decoded = MsgpackCodec(Schema.of(Event)).decode(raw_batch([good, value, good]), "decode")
    assert decoded.good["_offset"].to_list() == [0, 2]
    assert decoded.bad.select("_offset", "_reason", "_stage", "_raw").rows() == [
        (1, reason, "decode", value)
    ]


def test_msgpack_values_that_only_decode_together_are_dead_lettered() -> None:
    # The first value carries a whole second record; the next value is empty. Read as one
    # stream they would make two good records.
    first, second = (msgspec.msgpack.encode(event(id=f"evt-00000000{n}")) for n in (1, 2))
    decoded = MsgpackCodec(Schema.of(Event)).decode(raw_batch([first + second, b""]), "decode")
    assert decoded.good.height == 0
    assert decoded.bad.select("_offset", "_reason").rows() == [
        (0, f"MessagePack data is malformed: trailing characters (byte {len(first)})"),
        (1, "Input data was truncated"),
    ]
