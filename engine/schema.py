"""Message schemas: msgspec Structs as the one way to declare a message's shape and rules.

A schema is declared once as a `msgspec.Struct` (types, `Literal` choices, `Meta` bounds and
patterns) and compiled here into a `Schema`: the polars/Arrow dtypes of its columns, the
vectorised rule checks that the hot path runs over whole columns, and a per-record checker
that gives the exact reason for the rare bad record. Both kinds of check implement the same
rules; the property tests hold them to agreeing.

JSON typing rules are strict, as an integration hub needs them to be:

- `int` accepts a JSON integer only (not a float, not a boolean);
- `float` accepts a JSON number written with a fraction or exponent (``1.5``, ``2e3``), not
  an integer; declare `int | float` to accept any number;
- `str` accepts a JSON string only, never a number or boolean spelled as text;
- a field without a default must be present; `T | None` also admits an explicit null.

Example:

>>> from engine.schema_examples import Order  # id: pattern; amount: float ≥ 0; status: Literal
>>> schema = Schema.of(Order)
>>> schema.polars_schema()
Schema([('id', String), ('amount', Float64), ('status', String)])
>>> schema.check({"id": "o-1", "amount": 5, "status": "new"})
'amount: expected a number with a fraction, got int'
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import msgspec
import msgspec.inspect as mi
import polars as pl

from engine.errors import SchemaError


@dataclass(frozen=True)
class Node:
    """One field of a schema: its JSON kind, dtype, rules and, for containers, children."""

    name: str
    kind: str  # "str", "int", "float", "number", "bool", "literal", "datetime", "struct", "list"
    required: bool = True
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    pattern: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    children: tuple[Node, ...] = ()
    item: Node | None = None
    default: Any = msgspec.NODEFAULT  # the value an absent field takes, if it has one
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @property
    def has_default(self) -> bool:
        return self.default is not msgspec.NODEFAULT and self.default is not None

    @property
    def dtype(self) -> pl.DataType:
        if self.kind in ("str",):
            return pl.String()
        if self.kind == "literal":
            return pl.String() if isinstance(self.choices[0], str) else pl.Int64()
        if self.kind == "int":
            return pl.Int64()
        if self.kind in ("float", "number"):
            return pl.Float64()
        if self.kind == "bool":
            return pl.Boolean()
        if self.kind == "datetime":
            return pl.Datetime("us", "UTC")
        if self.kind == "struct":
            return pl.Struct({child.name: child.dtype for child in self.children})
        assert self.item is not None
        return pl.List(self.item.dtype)

    @property
    def has_datetime(self) -> bool:
        if self.kind == "datetime":
            return True
        return any(child.has_datetime for child in self.children) or (
            self.item is not None and self.item.has_datetime
        )


class Schema:
    """A compiled message schema: columns, vectorised checks and a per-record checker."""

    def __init__(self, struct_type: type[msgspec.Struct]) -> None:
        info = mi.type_info(struct_type)
        if not isinstance(info, mi.StructType):
            raise SchemaError(f"a schema must be a msgspec.Struct, got {struct_type!r}")
        self.struct_type = struct_type
        self.name = struct_type.__name__
        self.fields: tuple[Node, ...] = tuple(_field_node(f) for f in info.fields)

    @classmethod
    def of(cls, struct_type: type[msgspec.Struct]) -> Schema:
        """Compile `struct_type`; compiled schemas are cached, as steps share them."""
        cached = _CACHE.get(struct_type)
        if cached is None:
            cached = _CACHE[struct_type] = cls(struct_type)
        return cached

    def _walk(self, nodes: tuple[Node, ...] | None = None) -> Iterator[Node]:
        for node in self.fields if nodes is None else nodes:
            yield node
            yield from self._walk(node.children)

    def polars_schema(self) -> pl.Schema:
        return pl.Schema({node.name: node.dtype for node in self.fields})

    def conversions(self) -> list[pl.Expr]:
        """Expressions turning read columns into the schema's dtypes (date-time text → UTC
        datetimes; text that does not parse as RFC 3339 becomes null, for the checker)."""
        return [
            _converted(node, pl.col(node.name)).alias(node.name)
            for node in self.fields
            if node.has_datetime
        ]

    def defaults(self) -> list[pl.Expr]:
        """Expressions giving absent fields their defaults, for rows proven to hold no
        explicit null (where null means absent)."""
        return [
            _defaulted(node, pl.col(node.name)).alias(node.name)
            for node in self.fields
            if _has_defaults(node)
        ]

    def arrow_schema(self) -> Any:
        return pl.DataFrame(schema=self.polars_schema()).to_arrow().schema

    # ---- vectorised checks, for the hot path -------------------------------------------

    def valid(self) -> pl.Expr:
        """True where a row the scanner read satisfies the rules it does not check: patterns,
        bounds and lengths. (Presence, JSON types and Literal choices are the scanner's,
        `engine.json_scan`.)"""
        checks = list(_checks(self.fields, None))
        return pl.all_horizontal(*checks).fill_null(False) if checks else pl.lit(True)

    def datetimes_present(self) -> pl.Expr:
        """Per row, how many date-time values are not null (0 when the schema has none).

        Taken before and after `conversions`, it finds text that is not RFC 3339, which the
        conversion turns into null.
        """
        counts = [_datetimes_present(node, pl.col(node.name)) for node in self.fields]
        return pl.sum_horizontal(*counts, pl.lit(0)).cast(pl.Int64)

    # ---- per-record checker, for the rare bad record ------------------------------------

    def check(self, value: Any) -> str | None:
        """The reason `value` (a decoded JSON value) breaks the schema, or None if it fits."""
        if not isinstance(value, dict):
            return f"value: expected a JSON object, got {_json_type(value)}"
        return _check_object(self.fields, value, "")

    def row(self, value: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Split a valid record into its schema columns and its other fields (or None)."""
        return _split_known(self.fields, value)


_CACHE: dict[type, Schema] = {}


def _field_node(info: mi.Field) -> Node:
    """A struct field's node, with its default (a factory is called once, here)."""
    node = _node(info.name, info.type, info.required)
    if info.default is not msgspec.NODEFAULT:
        return replace(node, default=info.default)
    if info.default_factory is not msgspec.NODEFAULT:
        return replace(node, default=info.default_factory())
    return node


def _node(name: str, t: mi.Type, required: bool) -> Node:
    nullable = False
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        nullable = len(members) < len(t.types)
        kinds = {type(m) for m in members}
        if kinds == {mi.IntType, mi.FloatType}:
            # one set of bounds is checked whichever kind a value has, so both must agree
            if len({(m.ge, m.gt, m.le, m.lt) for m in members}) != 1:
                raise SchemaError(
                    f"field {name!r}: `int | float` needs the same bounds on both, got {t}"
                )
            number = members[0]
            _refuse_multiple_of(name, number)
            bounds = {"ge": number.ge, "gt": number.gt, "le": number.le, "lt": number.lt}
            return Node(name, "number", required, nullable, **bounds)
        if len(members) != 1:
            raise SchemaError(
                f"field {name!r}: unions other than `T | None` and `int | float` "
                f"are not supported, got {t}"
            )
        t = members[0]
    if isinstance(t, mi.StrType):
        regex = re.compile(t.pattern) if t.pattern else None
        return Node(
            name,
            "str",
            required,
            nullable,
            pattern=t.pattern,
            min_length=t.min_length,
            max_length=t.max_length,
            _regex=regex,
        )
    if isinstance(t, mi.IntType | mi.FloatType):
        kind = "int" if isinstance(t, mi.IntType) else "float"
        _refuse_multiple_of(name, t)
        return Node(name, kind, required, nullable, ge=t.ge, gt=t.gt, le=t.le, lt=t.lt)
    if isinstance(t, mi.BoolType):
        return Node(name, "bool", required, nullable)
    if isinstance(t, mi.DateTimeType):
        return Node(name, "datetime", required, nullable)
    if isinstance(t, mi.LiteralType):
        if len({type(v) for v in t.values}) != 1:
            raise SchemaError(f"field {name!r}: Literal values must share one type, got {t.values}")
        if isinstance(t.values[0], bool):
            raise SchemaError(
                f"field {name!r}: Literal values must be str or int, got {t.values}; "
                "declare a bool field and check its value with a validate step"
            )
        return Node(name, "literal", required, nullable, choices=tuple(t.values))
    if isinstance(t, mi.StructType):
        children = tuple(_field_node(f) for f in t.fields)
        return Node(name, "struct", required, nullable, children=children)
    if isinstance(t, mi.ListType):
        return Node(
            name,
            "list",
            required,
            nullable,
            item=_node(f"{name}[]", t.item_type, True),
            min_length=t.min_length,
            max_length=t.max_length,
        )
    raise SchemaError(f"field {name!r}: type {t} is not supported in a message schema")


_RFC3339 = "%Y-%m-%dT%H:%M:%S%.f%#z"


def _converted(node: Node, column: pl.Expr) -> pl.Expr:
    if node.kind == "datetime":
        return column.str.to_datetime(_RFC3339, time_unit="us", time_zone="UTC", strict=False)
    if node.kind == "list":
        assert node.item is not None
        return column.list.eval(_converted(node.item, pl.element()))
    return column.struct.with_fields(
        [
            _converted(child, column.struct.field(child.name)).alias(child.name)
            for child in node.children
            if child.has_datetime
        ]
    )


def _refuse_multiple_of(name: str, t: mi.IntType | mi.FloatType) -> None:
    """No check implements `multiple_of`: refuse it rather than let it pass unchecked."""
    if t.multiple_of is not None:
        raise SchemaError(
            f"field {name!r}: Meta(multiple_of={t.multiple_of}) is not supported in a message "
            f"schema; check it with a validate step"
        )


def _has_defaults(node: Node) -> bool:
    return node.has_default or any(_has_defaults(child) for child in node.children)


def _defaulted(node: Node, column: pl.Expr) -> pl.Expr:
    if node.kind == "struct" and any(_has_defaults(child) for child in node.children):
        column = column.struct.with_fields(
            [
                _defaulted(child, column.struct.field(child.name)).alias(child.name)
                for child in node.children
                if _has_defaults(child)
            ]
        )
    if node.has_default:
        column = column.fill_null(pl.lit(node.default, dtype=node.dtype))
    return column


def _datetimes_present(node: Node, column: pl.Expr) -> pl.Expr:
    if not node.has_datetime:
        return pl.lit(0)
    if node.kind == "datetime":
        return column.is_not_null().cast(pl.Int64)
    if node.kind == "list":
        assert node.item is not None
        return column.list.eval(_datetimes_present(node.item, pl.element())).list.sum()
    return pl.sum_horizontal(
        *[_datetimes_present(child, column.struct.field(child.name)) for child in node.children]
    )


def _column(node: Node, parent: pl.Expr | None) -> pl.Expr:
    return pl.col(node.name) if parent is None else parent.struct.field(node.name)


def _checks(nodes: tuple[Node, ...], parent: pl.Expr | None) -> Iterator[pl.Expr]:
    """The value rules of `nodes` and their children; an absent value passes (presence is
    the scanner's to check, as are JSON types and Literal choices)."""
    for node in nodes:
        column = _column(node, parent)
        rules = list(_value_rules(node, column))
        if rules:
            yield pl.all_horizontal(*rules) | column.is_null()
        if node.kind == "struct":
            yield from _checks(node.children, column)


def _value_rules(node: Node, column: pl.Expr) -> Iterator[pl.Expr]:
    """Checks that a non-null value satisfies; each is null where the value is null."""
    if node.kind in ("int", "float", "number"):
        if node.ge is not None:
            yield column >= node.ge
        if node.gt is not None:
            yield column > node.gt
        if node.le is not None:
            yield column <= node.le
        if node.lt is not None:
            yield column < node.lt
    elif node.kind == "str":
        # a fixed-width pattern is the scanner's to check (`fixed_width_classes`)
        if node.pattern is not None and fixed_width_classes(node.pattern) is None:
            yield column.str.contains(node.pattern)
        if node.min_length is not None:
            yield column.str.len_chars() >= node.min_length
        if node.max_length is not None:
            yield column.str.len_chars() <= node.max_length
    elif node.kind == "list":
        assert node.item is not None
        item_rules = list(_value_rules(node.item, pl.element()))
        if item_rules:
            yield column.list.eval(pl.all_horizontal(*item_rules)).list.all()
        if node.min_length is not None:
            yield column.list.len() >= node.min_length
        if node.max_length is not None:
            yield column.list.len() <= node.max_length


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _check_object(nodes: tuple[Node, ...], value: dict[str, Any], prefix: str) -> str | None:
    for node in nodes:
        path = f"{prefix}{node.name}"
        if node.name not in value:
            if node.required:
                return f"{path}: missing"
            continue
        reason = _check_value(node, value[node.name], path)
        if reason is not None:
            return reason
    return None


def _check_value(node: Node, value: Any, path: str) -> str | None:
    if value is None:
        return None if node.nullable else f"{path}: expected {_expected(node)}, got null"
    kind = node.kind
    if kind == "str" or (kind == "literal" and isinstance(node.choices[0], str)):
        if not isinstance(value, str):
            return f"{path}: expected {_expected(node)}, got {_json_type(value)}"
    elif kind in ("int", "float", "number") or kind == "literal":
        wanted = {"int": (int,), "float": (float,), "number": (int, float)}.get(kind, (int,))
        if isinstance(value, bool) or not isinstance(value, wanted):
            return f"{path}: expected {_expected(node)}, got {_json_type(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{path}: expected a finite number, got {value}"
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return f"{path}: {value} is out of the 64-bit integer range"
    elif kind == "bool":
        if not isinstance(value, bool):
            return f"{path}: expected a boolean, got {_json_type(value)}"
    elif kind == "datetime":
        if _parse_datetime(value) is None:
            return f"{path}: expected an RFC 3339 date-time with an offset, got {value!r}"
    elif kind == "struct":
        if not isinstance(value, dict):
            return f"{path}: expected an object, got {_json_type(value)}"
        return _check_object(node.children, value, f"{path}.")
    elif kind == "list":
        if not isinstance(value, list):
            return f"{path}: expected an array, got {_json_type(value)}"
        assert node.item is not None
        for index, item in enumerate(value):
            reason = _check_value(node.item, item, f"{path}[{index}]")
            if reason is not None:
                return reason
    return _check_bounds(node, value, path)


def _check_bounds(node: Node, value: Any, path: str) -> str | None:
    if node.kind == "literal" and value not in node.choices:
        choices = ", ".join(map(str, node.choices))
        return f"{path}: {value!r} is not one of {choices}"
    if node.ge is not None and value < node.ge:
        return f"{path}: {value} is below the minimum {node.ge}"
    if node.gt is not None and value <= node.gt:
        return f"{path}: {value} is not above {node.gt}"
    if node.le is not None and value > node.le:
        return f"{path}: {value} is above the maximum {node.le}"
    if node.lt is not None and value >= node.lt:
        return f"{path}: {value} is not below {node.lt}"
    if node._regex is not None and not node._regex.search(value):
        return f"{path}: {value!r} does not match {node.pattern}"
    if node.min_length is not None and len(value) < node.min_length:
        return f"{path}: length {len(value)} is below the minimum {node.min_length}"
    if node.max_length is not None and len(value) > node.max_length:
        return f"{path}: length {len(value)} is above the maximum {node.max_length}"
    return None


def _expected(node: Node) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number with a fraction",
        "number": "a number",
        "bool": "a boolean",
        "datetime": "an RFC 3339 date-time",
        "literal": "one of " + ", ".join(map(str, node.choices)),
        "struct": "an object",
        "list": "an array",
    }[node.kind]


def _parse_datetime(value: Any) -> datetime | None:
    """An aware datetime from RFC 3339 text, or None (naive times are refused)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _split_known(
    nodes: tuple[Node, ...], value: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    by_name = {node.name: node for node in nodes}
    for name, item in value.items():
        node = by_name.get(name)
        if node is None:
            extra[name] = item
        elif node.kind == "datetime" and isinstance(item, str):
            known[name] = _parse_datetime(item)
        elif node.kind == "struct" and isinstance(item, dict):
            known[name], nested = _split_known(node.children, item)
            if nested is not None:
                extra[name] = nested
        else:
            known[name] = item
            if item is None:
                # an explicit null is kept apart from an absent field so it is written back
                extra[name] = None
    for node in nodes:
        if node.name not in value and node.has_default:
            known[node.name] = node.default
    return known, extra or None


_CLASS_ESCAPES = {"d": "0-9"}
_FIXED_WIDTH_ATOM = re.compile(
    r"(?P<atom>\[(?P<set>[^\]\\^][^\]\\]*)\]|\\(?P<escaped>[dDwWsS.\-_/:@+])|(?P<literal>[^\\\[\](){}.*+?|^$]))"
    r"(?:\{(?P<repeat>[0-9]{1,3})\})?"
)


@functools.cache
def fixed_width_classes(pattern: str) -> tuple[bytes, ...] | None:
    """For a pattern matching only strings of one length, each made of ASCII characters
    from a class per position (`^evt-[0-9]{9}$`, `^[A-Z]{2}\\d{4}$`): per position, a
    256-bit set of the bytes allowed there. None for any other pattern.

    The scanner checks such patterns byte by byte while it reads (a value it finds not
    matching is left to the per-record path for the exact verdict); others are checked
    with a regex over the column. Only `^`, `$`, literals, `[...]` sets of literals and
    ranges, `\\d` and `{n}` are understood here.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        return None
    body, position, classes = pattern[1:-1], 0, []
    while position < len(body):
        atom = _FIXED_WIDTH_ATOM.match(body, position)
        if atom is None:
            return None
        allowed = _allowed_bytes(atom)
        if allowed is None:
            return None
        classes.extend([allowed] * int(atom["repeat"] or 1))
        position = atom.end()
    return tuple(classes) if classes else None


def _allowed_bytes(atom: re.Match[str]) -> bytes | None:
    """A 256-bit set (32 bytes, little-endian bits) of the ASCII bytes `atom` matches, or
    None when it is not a set of ASCII characters.

    Only ASCII bytes are ever allowed, so a string the scanner accepts has as many
    characters as bytes and matches exactly when the regex does; a non-ASCII character,
    even one the regex would take (`\\d` takes any Unicode digit), is left unread for the
    per-record path to judge.
    """
    if atom["escaped"] is not None:
        if atom["escaped"].isalpha() and atom["escaped"] not in _CLASS_ESCAPES:
            return None  # \\w, \\s and the negated classes: left to the regex
        members = _CLASS_ESCAPES.get(atom["escaped"], re.escape(atom["escaped"]))
    elif atom["set"] is not None:
        members = atom["set"]
        if not members.isascii() or re.search(r"\\[^d\-\]\\^.]", members):
            return None
    elif atom["literal"].isascii():
        members = re.escape(atom["literal"])
    else:
        return None
    matcher = re.compile(f"[{members}]")
    allowed = bytearray(32)
    for byte in range(128):
        if matcher.fullmatch(chr(byte)):
            allowed[byte // 8] |= 1 << (byte % 8)
    return bytes(allowed)
