"""The native scanner on the cases a strict JSON reader must get exactly right.

`tests/property/test_codec_property.py` holds the scanner to orjson on generated records;
these are the named edge cases, each with the row the scanner must produce or the fact that
it must leave the value to the per-record path (None).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import orjson
import polars as pl
import pyarrow as pa
import pytest

from engine import _native
from engine.codec import JsonCodec
from engine.json_scan import JsonScanner
from engine.schema import Schema, fixed_width_classes


class Point(msgspec.Struct):
    x: int
    label: str | None = None


class Record(msgspec.Struct):
    name: str
    count: int
    ratio: float
    size: int | float
    flag: bool
    level: Literal[1, 2, 3] = 1
    tags: list[str] = msgspec.field(default_factory=list)
    points: list[Point] | None = None
    grid: list[list[int]] | None = None
    where: Point | None = None
    note: Annotated[str, msgspec.Meta(max_length=9)] | None = None
    shade: Literal["dark", "light"] | None = None


BASE = '"name":"a","count":1,"ratio":0.5,"size":2,"flag":true'


def scan(*values: bytes) -> list[dict[str, Any] | None]:
    columns, read = JsonScanner(Schema.of(Record)).scan(pa.array(values, pa.large_binary()))
    frame = pl.from_arrow(columns)
    assert isinstance(frame, pl.DataFrame)
    return [row if ok else None for row, ok in zip(frame.to_dicts(), read.tolist(), strict=True)]


def read_one(members: str) -> dict[str, Any] | None:
    return scan(("{" + members + "}").encode())[0]


def test_reads_every_kind_of_field() -> None:
    row = read_one(
        BASE + ',"level":3,"tags":["x","y"],"points":[{"x":1},{"label":"b","x":2}],'
        '"grid":[[1,2],[]],"where":{"x":-7},"note":"n","shade":"light"'
    )
    assert row == {
        "name": "a",
        "count": 1,
        "ratio": 0.5,
        "size": 2.0,
        "flag": True,
        "level": 3,
        "tags": ["x", "y"],
        "points": [{"x": 1, "label": None}, {"x": 2, "label": "b"}],
        "grid": [[1, 2], []],
        "where": {"x": -7, "label": None},
        "note": "n",
        "shade": "light",
    }


def test_absent_optional_fields_are_null() -> None:
    row = read_one(BASE)
    assert row is not None
    optional = ("level", "tags", "points", "where", "note", "shade")
    assert [row[name] for name in optional] == [None] * len(optional)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r'"\u00e9\n\t\"\\\/"', 'é\n\t"\\/'),
        (r'"\ud83d\ude00"', "😀"),
        ('"é😀"', "é😀"),
        (r'"\u0000"', "\0"),
    ],
)
def test_strings_are_unescaped(text: str, expected: str) -> None:
    row = read_one(BASE.replace('"name":"a"', f'"name":{text}'))
    assert row is not None and row["name"] == expected


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("ratio", "1.5e2", 150.0),
        ("ratio", "-0.0", -0.0),
        ("ratio", "0.1", 0.1),
        ("ratio", "1E-400", 0.0),
        ("ratio", "123456789012345678901234567890.5", 1.2345678901234568e29),
        ("size", "-0", 0.0),
        ("size", "9223372036854775808", 9.223372036854776e18),
        ("size", "2.5", 2.5),
        ("count", "-9223372036854775808", -(2**63)),
        ("count", "9223372036854775807", 2**63 - 1),
    ],
)
def test_numbers_read_as_a_conforming_parser_reads_them(
    field: str, text: str, expected: float
) -> None:
    row = read_one(re.sub(f'"{field}":[^,]*', f'"{field}":{text}', BASE))
    assert row is not None
    assert row[field] == expected
    assert str(row[field]) == str(expected)  # -0.0 stays -0.0, 0 stays 0


@pytest.mark.parametrize(
    "members",
    [
        BASE.replace('"ratio":0.5', '"ratio":5'),  # a float field needs a fraction
        BASE.replace('"count":1', '"count":1.0'),
        BASE.replace('"count":1', '"count":9223372036854775808'),
        BASE.replace('"ratio":0.5', '"ratio":1e400'),
        BASE.replace('"ratio":0.5', '"ratio":01.5'),
        BASE.replace('"ratio":0.5', '"ratio":1.'),
        BASE.replace('"ratio":0.5', '"ratio":.5'),
        BASE.replace('"ratio":0.5', '"ratio":NaN'),
        BASE.replace('"flag":true', '"flag":1'),
        BASE.replace('"name":"a"', '"name":null'),  # an explicit null is kept in `_extra`
        BASE.replace('"count":1', '"count":1,"count":2'),  # a repeated field
        BASE + ',"other":1',  # a field the schema does not declare
        BASE + ',"where":{"x":1,"y":2}',
        BASE.replace('"name":"a"', '"name":"\\ud800"'),  # a lone surrogate
        BASE.replace('"name":"a"', '"name":"a\tb"'),  # a raw control character
        BASE + ",",
        BASE + ',"tags":["a",]',
        BASE + ',"level":4',  # a Literal's value not among its choices
        BASE + ',"shade":"dim"',
        BASE + ',"shade":"dar"',
        '"name":"a"',  # required fields missing
    ],
)
def test_leaves_what_it_is_not_sure_of_to_the_per_record_path(members: str) -> None:
    assert read_one(members) is None


@pytest.mark.parametrize(
    "value",
    [b"", b"[]", b"nope", b"{" + BASE.encode() + b"} x", b'{"name":"\xff"}', b"\xef\xbb\xbf{}"],
)
def test_leaves_values_that_are_not_one_object_to_the_per_record_path(value: bytes) -> None:
    assert scan(value) == [None]


def test_an_unread_value_does_not_disturb_its_neighbours() -> None:
    good = ("{" + BASE + ',"tags":["t"],"points":[{"x":1}]}').encode()
    # fails after it has appended list items and struct children
    bad = ("{" + BASE + ',"tags":["u","v"],"points":[{"x":2},{"x":null}]}').encode()
    rows = scan(good, bad, good)
    assert rows[1] is None
    assert rows[0] == rows[2] and rows[0] is not None
    assert rows[0]["tags"] == ["t"] and rows[0]["points"] == [{"x": 1, "label": None}]


def test_escaped_and_reordered_field_names_are_read() -> None:
    row = read_one('"fl\\u0061g":false,"size":1.5,"ratio":2.5,"count":3,"n\\u0061me":"z"')
    assert row is not None
    assert (row["name"], row["count"], row["flag"]) == ("z", 3, False)


def test_a_malformed_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="root"):
        _native.scan([(0, b"", True, -1, (), b"")], b"", b"\0" * 8)
    with pytest.raises(ValueError, match="list needs exactly one item"):
        _native.scan([(5, b"", True, -1, (), b""), (6, b"l", True, 0, (), b"")], b"", b"\0" * 8)
    with pytest.raises(ValueError, match="outside the data"):
        _native.scan(
            [(5, b"", True, -1, (), b"")], b"{}", memoryview(b"\0" * 8 + b"\x09" + b"\0" * 7)
        )
    with pytest.raises(ValueError, match="32 bytes a position"):
        _native.scan([(5, b"", True, -1, (), b"x")], b"", b"\0" * 8)


@pytest.mark.parametrize(
    ("pattern", "width"),
    [
        (r"^evt-[0-9]{9}$", 13),
        (r"^cust-[0-9]{5}$", 10),
        (r"^[A-Z]{2}\d{4}$", 6),
        (r"^a\.b$", 3),
        (r"^o-[0-9]+$", None),  # a repeat without a count: widths vary
        (r"^a.b$", None),  # any character, multi-byte ones too
        (r"evt-[0-9]{9}", None),  # not anchored: a search
        (r"^[\w]{2}$", None),  # \w is Unicode-aware
        (r"^é{2}$", None),
        (r"^(?i)ab$", None),
    ],
)
def test_fixed_width_patterns_are_compiled_to_byte_sets(pattern: str, width: int | None) -> None:
    classes = fixed_width_classes(pattern)
    assert (None if classes is None else len(classes)) == width


class Tagged(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(pattern=r"^evt-\d{3}$")]


def test_a_fixed_width_pattern_is_checked_by_the_scanner_and_judged_exactly() -> None:
    """The scanner reads only values whose text fits the pattern byte by byte; the others go
    to the per-record path, which decides as a regex does: a non-ASCII digit matches \\d."""
    codec = JsonCodec(Schema.of(Tagged))
    values = ["evt-123", "evt-12", "evt-1234", "evt-12x", "EVT-123", "evt-12\u0663"]
    raw = [orjson.dumps({"id": value}) for value in values]
    _, read = JsonScanner(Schema.of(Tagged)).scan(pa.array(raw, pa.large_binary()))
    assert read.tolist() == [True, False, False, False, False, False]
    decoded = codec.decode(pl.DataFrame({"_raw": raw}, schema={"_raw": pl.Binary}), "v")
    assert decoded.good["id"].to_list() == ["evt-123", "evt-12\u0663"]
    assert decoded.bad["_reason"].to_list() == [
        f"id: {value!r} does not match ^evt-\\d{{3}}$"
        for value in ["evt-12", "evt-1234", "evt-12x", "EVT-123"]
    ]
