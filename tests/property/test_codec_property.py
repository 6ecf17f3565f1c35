"""The JSON codec agrees with a naive reference on generated and corrupted records.

The codec proves most rows with vectorised checks over whole columns and sends only the rest
to a per-record path. These tests hold the fast path to never accepting a value that the naive
reference (`orjson.loads`, then `Schema.check`) rejects, to reading every accepted value as
orjson reads it, and to giving the same result however a stream is cut into batches.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import orjson
import polars as pl
import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from engine.batch import raw_batch
from engine.codec import JsonCodec, encode_json
from engine.json_scan import JsonScanner
from engine.schema import Schema

TIERS = ("gold", "silver", "bronze")


class Attrs(msgspec.Struct):
    email: str
    tier: Literal["gold", "silver", "bronze"]


class Event(msgspec.Struct):
    """Shaped like W1: every field required but `note`."""

    id: Annotated[str, msgspec.Meta(pattern=r"^evt-[0-9]{3}$")]
    ts: Annotated[int, msgspec.Meta(ge=0)]
    kind: Literal["order", "refund"]
    amount: Annotated[float, msgspec.Meta(ge=0, le=500)]
    attrs: Attrs
    tags: list[str]
    note: str | None = None


class Loose(msgspec.Struct):
    """Every field optional, so a row the columnar reader could not read (all nulls) must
    not pass for `{}`; `code`'s pattern accepts text a JSON number turns into."""

    code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")] | None = None
    count: int | None = None
    ratio: Annotated[float, msgspec.Meta(gt=-1e6)] | None = None
    flag: bool | None = None
    scores: list[float] | None = None
    attrs: Attrs | None = None


# Strings that a lenient reader might take for another JSON type, or that trip a byte screen.
TRICKY_TEXT = [
    "5",
    "-1",
    "1.5",
    "1e5",
    "true",
    "false",
    "null",
    "{}",
    "[1]",
    "a:b",
    "{",
    "}",
    "\\",
    '"',
    "\n",
    "évt",
    "😀",
    "\ud800",
]
TEXT = st.one_of(st.text(max_size=6), st.sampled_from(TRICKY_TEXT))
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), FINITE, TEXT)
ANY_JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
ATTRS = st.fixed_dictionaries({"email": TEXT, "tier": st.sampled_from(TIERS)})

VALID: dict[type[msgspec.Struct], st.SearchStrategy[dict[str, Any]]] = {
    Event: st.fixed_dictionaries(
        {
            "id": st.from_regex(r"evt-[0-9]{3}", fullmatch=True),
            "ts": st.integers(0, 2**63 - 1),
            "kind": st.sampled_from(["order", "refund"]),
            "amount": st.floats(0, 500),
            "attrs": ATTRS,
            "tags": st.lists(TEXT, max_size=3),
        },
        optional={"note": st.one_of(st.none(), TEXT)},
    ),
    Loose: st.fixed_dictionaries(
        {},
        optional={
            "code": st.one_of(st.none(), st.from_regex(r"[0-9]{2}", fullmatch=True)),
            "count": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            "ratio": st.one_of(st.none(), st.floats(-1e5, 1e300)),
            "flag": st.one_of(st.none(), st.booleans()),
            "scores": st.one_of(st.none(), st.lists(FINITE, max_size=3)),
            "attrs": st.one_of(st.none(), ATTRS),
        },
    ),
}

# Values of the right JSON type that break a rule, per field path.
RULE_BREAKERS: dict[type[msgspec.Struct], dict[str, list[Any]]] = {
    Event: {
        "id": ["evt-12", "evt-1234", "EVT-123", ""],
        "ts": [-1],
        "kind": ["Order", "cancel"],
        "amount": [-0.5, 500.25, 1e300],
        "attrs.tier": ["GOLD", ""],
    },
    Loose: {"code": ["123", "1a", "", "1.5"], "ratio": [-1e6, -2e6], "attrs.tier": ["x"]},
}


@dataclass(frozen=True)
class Token:
    """A number written exactly as given: `5` where a fraction is required, `1e2`, `-0`."""

    text: str


@dataclass(frozen=True)
class Twice:
    """A member written twice: `earlier` first, then `later` (which a JSON reader keeps)."""

    earlier: Any
    later: Any


# Numbers of the wrong JSON kind for a field: integers where a fraction is required, numbers
# with a fraction or exponent where an integer is, numbers whose text a string field accepts.
WRONG_NUMBERS = st.sampled_from(
    [Token(t) for t in ("5", "0", "-0", "12", "500", "1e2", "1.0", "2.5", "-0.0", "1E1")]
    + [2**63, 2**64, -(2**63) - 1, True, False]
)
RETYPED = st.one_of(WRONG_NUMBERS, st.sampled_from(TRICKY_TEXT), ANY_JSON)


@dataclass(frozen=True)
class Style:
    """How a record is written: whitespace between tokens, `\\u` escapes in strings."""

    rng: random.Random
    whitespace: float
    escapes: float


WHITESPACE = (" ", "\n", "\t", "\r\n", "  \n ")


def write(value: Any, style: Style) -> str:
    """Write `value` as JSON text, with the style's whitespace and escapes."""
    rng = style.rng

    def gap() -> str:
        return rng.choice(WHITESPACE) if rng.random() < style.whitespace else ""

    if isinstance(value, Token):
        return value.text
    if isinstance(value, str):
        return write_string(value, style)
    if isinstance(value, dict):
        members: list[str] = []
        for key, item in value.items():
            for written in (item.earlier, item.later) if isinstance(item, Twice) else (item,):
                name = write_string(key, style)
                members.append(f"{gap()}{name}{gap()}:{gap()}{write(written, style)}{gap()}")
        return "{" + ",".join(members) + gap() + "}"
    if isinstance(value, list):
        return "[" + ",".join(f"{gap()}{write(item, style)}{gap()}" for item in value) + "]"
    return orjson.dumps(value).decode() if not isinstance(value, int) else str(value).lower()


def write_string(text: str, style: Style) -> str:
    parts = []
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF or style.rng.random() < style.escapes:
            if code > 0xFFFF:
                code -= 0x10000
                parts.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}")
            else:
                parts.append(f"\\u{code:04x}")
        else:
            parts.append(orjson.dumps(char).decode()[1:-1])
    return '"' + "".join(parts) + '"'


def paths(record: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Every (container, key) naming a member or list item of the record, nested ones too."""
    found: list[tuple[Any, Any]] = []
    for key, item in record.items():
        found.append((record, key))
        if isinstance(item, dict):
            found.extend((item, inner) for inner in item)
        elif isinstance(item, list):
            found.extend((item, index) for index in range(len(item)))
    return found


@st.composite
def corrupted_record(draw: st.DrawFn, schema_type: type[msgspec.Struct]) -> bytes:
    """A valid record, then none to several corruptions of its content and of its text."""
    record = draw(VALID[schema_type])
    for corruption in draw(
        st.lists(st.sampled_from(["drop", "retype", "extra", "rule", "twice"]), max_size=4)
    ):
        places = paths(record)
        if corruption == "extra":
            inside = draw(
                st.sampled_from([record, *[v for v in record.values() if isinstance(v, dict)]])
            )
            inside[draw(st.text(max_size=5))] = draw(ANY_JSON)
        elif corruption == "rule":
            path, choices = draw(st.sampled_from(sorted(RULE_BREAKERS[schema_type].items())))
            head, _, tail = path.partition(".")
            target = record.get(head) if tail else record
            if isinstance(target, dict):
                target[tail or head] = draw(st.sampled_from(choices))
        elif places:
            container, key = draw(st.sampled_from(places))
            if corruption == "drop" and isinstance(container, dict):
                del container[key]
            elif corruption == "retype":
                container[key] = draw(RETYPED)
            elif corruption == "twice" and isinstance(container, dict):
                if isinstance(container[key], Twice):
                    continue
                container[key] = (
                    Twice(draw(RETYPED), container[key])
                    if draw(st.booleans())
                    else Twice(container[key], draw(RETYPED))
                )
    top: Any = record if draw(st.integers(0, 19)) else draw(ANY_JSON)
    style = Style(
        draw(st.randoms(use_true_random=False)),
        draw(st.sampled_from([0.0, 0.0, 0.2, 0.7])),
        draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])),
    )
    raw = write(top, style).encode()
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "delete", "insert", "utf8", "empty"]))
    at = draw(st.integers(0, max(len(raw) - 1, 0)))
    if damage == "cut":
        raw = raw[:at]
    elif damage == "delete":
        raw = raw[:at] + raw[at + 1 :]
    elif damage == "insert":
        raw = (
            raw[:at] + draw(st.sampled_from([b"{", b"}", b":", b",", b'"', b"x", b"1"])) + raw[at:]
        )
    elif damage == "utf8":
        raw = raw[:at] + b"\xff" + raw[at:]
    elif damage == "empty":
        raw = b""
    return raw


def reference_reason(schema: Schema, raw: bytes) -> str | None:
    """The naive verdict: parse with orjson, then check the value record by record."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return f"value is not valid JSON: {error}"
    return schema.check(value)


def project(value: Any, dtype: pl.DataType) -> Any:
    """The part of a JSON value that a column of `dtype` holds (absent fields as null)."""
    if isinstance(dtype, pl.Struct) and isinstance(value, dict):
        return {field.name: project(value.get(field.name), field.dtype) for field in dtype.fields}
    return value


def decode_in_chunks(
    codec: JsonCodec, values: list[bytes], cuts: list[int]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    bounds = [0, *sorted(set(cuts)), len(values)]
    goods, bads = [], []
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue
        chunk = raw_batch(values[start:end], offsets=list(range(start, end)))
        decoded = codec.decode(chunk, "decode")
        goods.append(decoded.good)
        bads.append(decoded.bad)
    return pl.concat(goods), pl.concat(bads)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), schema_type=st.sampled_from([Event, Loose]))
def test_decode_agrees_with_orjson_and_schema_check(data: st.DataObject, schema_type) -> None:
    schema = Schema.of(schema_type)
    codec = JsonCodec(schema)
    values = data.draw(st.lists(corrupted_record(schema_type), min_size=1, max_size=16))
    keys = [f"k{index}".encode() for index in range(len(values))]
    partitions = [index % 3 for index in range(len(values))]

    decoded = codec.decode(raw_batch(values, keys=keys, partitions=partitions), "decode")

    reasons = [reference_reason(schema, raw) for raw in values]
    good_rows = [row for row, reason in enumerate(reasons) if reason is None]
    bad_rows = [row for row, reason in enumerate(reasons) if reason is not None]
    assert decoded.good["_offset"].to_list() == good_rows
    assert decoded.good["_key"].to_list() == [keys[row] for row in good_rows]
    assert decoded.good["_partition"].to_list() == [partitions[row] for row in good_rows]
    assert decoded.bad.select("_offset", "_reason", "_stage", "_raw", "_key").rows() == [
        (row, reasons[row], "decode", values[row], keys[row]) for row in bad_rows
    ]

    polars_schema = schema.polars_schema()
    expected_columns = [
        {
            name: project(orjson.loads(values[row]).get(name), dtype)
            for name, dtype in polars_schema.items()
        }
        for row in good_rows
    ]
    assert decoded.good.select(list(polars_schema)).to_dicts() == expected_columns

    # Encoding writes every record back as it came: fields the schema does not declare
    # included, an absent optional field still absent, an explicit null still null.
    for row, encoded in zip(good_rows, encode_json(decoded.good).to_list(), strict=True):
        assert orjson.loads(encoded) == orjson.loads(values[row])

    # However the same values are cut into batches, the results are the same.
    cuts = data.draw(st.lists(st.integers(0, len(values)), min_size=1, max_size=4))
    whole = codec.decode(raw_batch(values), "decode")
    good, bad = decode_in_chunks(codec, values, cuts)
    assert_frame_equal(good, whole.good)
    assert_frame_equal(bad, whole.bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), schema_type=st.sampled_from([Event, Loose]))
def test_scanner_reads_only_what_orjson_reads_and_reads_it_alike(
    data: st.DataObject, schema_type
) -> None:
    schema = Schema.of(schema_type)
    values = data.draw(st.lists(corrupted_record(schema_type), min_size=1, max_size=16))

    columns, read = JsonScanner(schema).scan(pa.array(values, pa.large_binary()))

    frame = pl.from_arrow(columns)
    assert isinstance(frame, pl.DataFrame)
    for row, raw in enumerate(values):
        if not read[row]:
            assert frame.row(row) == (None,) * frame.width
            continue
        value = orjson.loads(raw)  # the scanner read it, so it is JSON
        assert isinstance(value, dict)
        assert set(value) <= set(schema.polars_schema())
        assert frame.row(row, named=True) == {
            name: project(value.get(name), dtype) for name, dtype in schema.polars_schema().items()
        }


def holds_null_or_surrogate(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, dict):
        return any(holds_null_or_surrogate(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_null_or_surrogate(item) for item in value)
    return False


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    schema_type=st.sampled_from([Event, Loose]),
    rng=st.randoms(use_true_random=False),
    whitespace=st.sampled_from([0.0, 0.3, 1.0]),
    escapes=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_scanner_reads_every_well_formed_record_itself(
    data: st.DataObject, schema_type, rng: random.Random, whitespace: float, escapes: float
) -> None:
    """Whitespace, escapes, any key order: none of it sends a record to the per-record path.
    Only an explicit null (kept in `_extra`) and a lone surrogate (not UTF-8) do."""
    record = data.draw(VALID[schema_type])
    assume(not holds_null_or_surrogate(record))
    members = list(record.items())
    rng.shuffle(members)
    raw = write(dict(members), Style(rng, whitespace, escapes)).encode()

    _, read = JsonScanner(Schema.of(schema_type)).scan(pa.array([raw], pa.large_binary()))

    assert read.tolist() == [True], raw
