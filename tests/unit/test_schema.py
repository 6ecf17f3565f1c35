"""A msgspec Struct compiles to the columns a user expects and to exact per-field reasons."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
import polars as pl
import pytest

from engine.errors import SchemaError
from engine.schema import Schema


class Attrs(msgspec.Struct):
    email: str
    tier: Literal["gold", "silver", "bronze"]


class Line(msgspec.Struct):
    sku: str
    quantity: int


class Order(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(pattern=r"^evt-[0-9]{3}$")]
    ts: Annotated[int, msgspec.Meta(ge=0)]
    amount: Annotated[float, msgspec.Meta(ge=0, le=500)]
    total: int | float
    paid: bool
    level: Literal[1, 2, 3]
    source: Literal["crm", "erp", "web"]
    attrs: Attrs
    tags: list[str]
    lines: list[Line]
    code: Annotated[str, msgspec.Meta(min_length=2, max_length=3)]
    discount: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None
    note: str | None = None
    shipping: Attrs | None = None


GOOD: dict[str, Any] = {
    "id": "evt-042",
    "ts": 1767225600042,
    "amount": 123.45,
    "total": 7,
    "paid": True,
    "level": 2,
    "source": "crm",
    "attrs": {"email": "User42@Example.io", "tier": "gold"},
    "tags": ["new", "vip"],
    "lines": [{"sku": "a", "quantity": 1}],
    "code": "ab",
}


def test_types_map_to_polars_dtypes() -> None:
    assert Schema.of(Order).polars_schema() == pl.Schema(
        {
            "id": pl.String(),
            "ts": pl.Int64(),
            "amount": pl.Float64(),
            "total": pl.Float64(),
            "paid": pl.Boolean(),
            "level": pl.Int64(),
            "source": pl.String(),
            "attrs": pl.Struct({"email": pl.String(), "tier": pl.String()}),
            "tags": pl.List(pl.String()),
            "lines": pl.List(pl.Struct({"sku": pl.String(), "quantity": pl.Int64()})),
            "code": pl.String(),
            "discount": pl.Float64(),
            "note": pl.String(),
            "shipping": pl.Struct({"email": pl.String(), "tier": pl.String()}),
        }
    )


def test_arrow_schema_has_the_same_columns() -> None:
    arrow = Schema.of(Attrs).arrow_schema()
    assert [(field.name, str(field.type)) for field in arrow] == [
        ("email", "large_string"),
        ("tier", "large_string"),
    ]


def test_a_record_that_fits_has_no_reason() -> None:
    schema = Schema.of(Order)
    assert schema.check(GOOD) is None
    assert schema.check({**GOOD, "note": None, "discount": None, "shipping": None}) is None
    assert schema.check({**GOOD, "total": 7.5, "amount": 2e2, "unknown": [1, {"x": None}]}) is None


def with_(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the field at dotted `path` set to `value` (or removed, for `...`)."""
    record = {**GOOD, "attrs": dict(GOOD["attrs"])}
    *parents, leaf = path.split(".")
    target = record
    for parent in parents:
        target = target[parent]
    if value is ...:
        del target[leaf]
    else:
        target[leaf] = value
    return record


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param(with_("ts", ...), "ts: missing", id="missing field"),
        pytest.param(with_("attrs.email", ...), "attrs.email: missing", id="missing nested"),
        pytest.param(with_("id", 42), "id: expected a string, got int", id="int where str"),
        pytest.param(with_("id", None), "id: expected a string, got null", id="null required"),
        pytest.param(with_("ts", 1.5), "ts: expected an integer, got float", id="float where int"),
        pytest.param(with_("ts", 2.0), "ts: expected an integer, got float", id="integral float"),
        pytest.param(with_("ts", True), "ts: expected an integer, got bool", id="bool where int"),
        pytest.param(with_("ts", "1"), "ts: expected an integer, got str", id="str where int"),
        pytest.param(
            with_("amount", 5),
            "amount: expected a number with a fraction, got int",
            id="int where float",
        ),
        pytest.param(
            with_("amount", "1.5"),
            "amount: expected a number with a fraction, got str",
            id="str where float",
        ),
        pytest.param(with_("total", "7"), "total: expected a number, got str", id="str number"),
        pytest.param(with_("total", False), "total: expected a number, got bool", id="bool num"),
        pytest.param(with_("paid", 1), "paid: expected a boolean, got int", id="int where bool"),
        pytest.param(with_("paid", "true"), "paid: expected a boolean, got str", id="str bool"),
        pytest.param(
            with_("attrs", ["gold"]), "attrs: expected an object, got array", id="array object"
        ),
        pytest.param(with_("tags", "vip"), "tags: expected an array, got str", id="str array"),
        pytest.param(with_("ts", -1), "ts: -1 is below the minimum 0", id="below minimum"),
        pytest.param(
            with_("amount", 500.5), "amount: 500.5 is above the maximum 500", id="above maximum"
        ),
        pytest.param(with_("discount", 1.0), "discount: 1.0 is not below 1", id="not below"),
        pytest.param(with_("discount", 0.0), "discount: 0.0 is not above 0", id="not above"),
        pytest.param(
            with_("ts", 2**63),
            "ts: 9223372036854775808 is out of the 64-bit integer range",
            id="int64 overflow",
        ),
        pytest.param(
            with_("amount", float("inf")),
            "amount: expected a finite number, got inf",
            id="infinite",
        ),
        pytest.param(
            with_("id", "evt-42"), "id: 'evt-42' does not match ^evt-[0-9]{3}$", id="pattern"
        ),
        pytest.param(with_("code", "a"), "code: length 1 is below the minimum 2", id="too short"),
        pytest.param(with_("code", "abcd"), "code: length 4 is above the maximum 3", id="too long"),
        pytest.param(
            with_("source", "CRM"), "source: 'CRM' is not one of crm, erp, web", id="literal"
        ),
        pytest.param(
            with_("source", 1),
            "source: expected one of crm, erp, web, got int",
            id="literal wrong type",
        ),
        pytest.param(with_("level", 4), "level: 4 is not one of 1, 2, 3", id="int literal"),
        pytest.param(
            with_("level", True), "level: expected one of 1, 2, 3, got bool", id="bool literal"
        ),
        pytest.param(
            with_("attrs.email", 5), "attrs.email: expected a string, got int", id="nested path"
        ),
        pytest.param(
            with_("attrs.tier", "platinum"),
            "attrs.tier: 'platinum' is not one of bronze, gold, silver",
            id="nested literal",
        ),
        pytest.param(
            with_("tags", ["new", 7]), "tags[1]: expected a string, got int", id="list item"
        ),
        pytest.param(
            with_("lines", [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": "2"}]),
            "lines[1].quantity: expected an integer, got str",
            id="field of list item",
        ),
        pytest.param(
            with_("shipping", {"email": "a"}), "shipping.tier: missing", id="optional struct"
        ),
        pytest.param(with_("note", 1), "note: expected a string, got int", id="optional wrong"),
        pytest.param(["a"], "value: expected a JSON object, got array", id="not an object"),
        pytest.param("{}", "value: expected a JSON object, got str", id="string value"),
        pytest.param(None, "value: expected a JSON object, got null", id="null value"),
    ],
)
def test_check_names_the_field_and_what_was_expected(record: Any, reason: str) -> None:
    assert Schema.of(Order).check(record) == reason


def test_check_reports_the_first_broken_field_in_declaration_order() -> None:
    record = {**GOOD, "ts": -5, "source": "mail", "attrs": {"email": 1, "tier": "x"}}
    assert Schema.of(Order).check(record) == "ts: -5 is below the minimum 0"


class Unsupported(msgspec.Struct):
    id: str
    payload: bytes


class UnsupportedInList(msgspec.Struct):
    counts: list[dict[str, int]]


class MixedLiteral(msgspec.Struct):
    flag: Literal[1, "yes"]


class IntOrStr(msgspec.Struct):
    ref: int | str


def test_unsupported_type_names_the_field() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(Unsupported)
    assert str(raised.value) == (
        "field 'payload': type BytesType(min_length=None, max_length=None) is not supported "
        "in a message schema"
    )


def test_unsupported_list_item_names_the_list_field() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(UnsupportedInList)
    message = str(raised.value)
    assert message.startswith("field 'counts[]': type DictType(")
    assert message.endswith(") is not supported in a message schema")


def test_mixed_literal_names_the_field_and_values() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(MixedLiteral)
    assert str(raised.value) == "field 'flag': Literal values must share one type, got (1, 'yes')"


class BoolLiteral(msgspec.Struct):
    accepted: Literal[True]


def test_bool_literal_is_refused_with_what_to_declare_instead() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(BoolLiteral)
    assert str(raised.value) == (
        "field 'accepted': Literal values must be str or int, got (True,); "
        "declare a bool field and check its value with a validate step"
    )


def test_union_other_than_optional_or_number_names_the_field() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(IntOrStr)
    message = str(raised.value)
    assert message.startswith(
        "field 'ref': unions other than `T | None` and `int | float` are not supported, got "
    )
    assert "IntType" in message
    assert "StrType" in message


def test_a_schema_must_be_a_struct() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(dict)  # type: ignore[arg-type]
    assert str(raised.value) == "a schema must be a msgspec.Struct, got <class 'dict'>"


class BoundedNumber(msgspec.Struct):
    price: Annotated[int, msgspec.Meta(ge=0)] | Annotated[float, msgspec.Meta(ge=0)]


class UnevenNumber(msgspec.Struct):
    price: Annotated[int, msgspec.Meta(ge=0)] | float


class Multiple(msgspec.Struct):
    quantity: Annotated[int, msgspec.Meta(multiple_of=5)]


def test_bounds_of_an_int_or_float_field_apply_to_both_kinds() -> None:
    schema = Schema.of(BoundedNumber)
    assert schema.polars_schema() == pl.Schema({"price": pl.Float64()})
    assert schema.check({"price": -1}) == "price: -1 is below the minimum 0"
    assert schema.check({"price": -0.5}) == "price: -0.5 is below the minimum 0"
    assert schema.check({"price": 3}) is None
    assert schema.check({"price": 3.5}) is None


def test_int_or_float_with_bounds_on_one_kind_only_is_refused() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(UnevenNumber)
    message = str(raised.value)
    assert message.startswith("field 'price': `int | float` needs the same bounds on both, got ")


def test_multiple_of_is_refused_rather_than_left_unchecked() -> None:
    with pytest.raises(SchemaError) as raised:
        Schema(Multiple)
    assert str(raised.value) == (
        "field 'quantity': Meta(multiple_of=5) is not supported in a message schema; "
        "check it with a validate step"
    )


class Defaults(msgspec.Struct):
    """Fields that take a value when absent."""

    id: str
    status: str = "new"
    tries: int = 0
    tags: list[str] = msgspec.field(default_factory=list)
    note: str | None = None


def test_absent_fields_take_their_defaults_on_both_decode_paths() -> None:
    from engine.batch import raw_batch
    from engine.codec import JsonCodec, encode_json

    values = [
        b'{"id": "a"}',  # proven on the fast path
        b'{"id": "b", "extra": 1}',  # has an undeclared field: the per-record path
        b'{"id": "c", "status": "done", "tries": 2, "tags": ["x"], "note": null}',
    ]
    decoded = JsonCodec(Schema.of(Defaults)).decode(raw_batch(values), "decode")
    assert decoded.good.select("id", "status", "tries", "tags", "note").rows() == [
        ("a", "new", 0, [], None),
        ("b", "new", 0, [], None),
        ("c", "done", 2, ["x"], None),
    ]
    assert [orjson.loads(v) for v in encode_json(decoded.good).to_list()] == [
        {"id": "a", "status": "new", "tries": 0, "tags": []},
        {"id": "b", "status": "new", "tries": 0, "tags": [], "extra": 1},
        {"id": "c", "status": "done", "tries": 2, "tags": ["x"], "note": None},
    ]
