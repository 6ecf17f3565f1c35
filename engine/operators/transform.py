"""Transform and translate: compute, rename, cast and drop fields with expressions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
import polars as pl

from engine.batch import EXTRA
from engine.operators.base import MAIN, Outputs, Step, column, require_fields, sql

CastType = Literal["int", "float", "str", "bool"]
_DTYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(),
    "float": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
}


class Transform(Step, tag="transform"):
    """Set, cast, rename and drop fields, in that order; other fields pass unchanged.

    Every `set` expression sees the row as it came in (they are computed together), so
    `{"a": "b", "b": "a"}` swaps two fields. A dotted target (`attrs.email`) replaces a field
    inside a struct and keeps its siblings. A cast that cannot convert a value gives null
    (use `validate` after it to reject such rows). Stateless; order and envelope are kept.

    Args:
        set: target field → polars SQL expression.
        cast: field → one of int, float, str, bool.
        rename: old top-level name → new name.
        drop: top-level fields to remove.

    >>> import polars as pl
    >>> step = Transform(set={"cents": "CAST(ROUND(amount * 100) AS BIGINT)"}, drop=("amount",))
    >>> step.process(pl.DataFrame({"amount": [1.25, 2.5]}), None)["main"].to_dicts()
    [{'cents': 125}, {'cents': 250}]
    """

    set: dict[str, str] = msgspec.field(default_factory=dict)
    cast: dict[str, CastType] = msgspec.field(default_factory=dict)
    rename: dict[str, str] = msgspec.field(default_factory=dict)
    drop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.set or self.cast or self.rename or self.drop):
            raise ValueError("expected at least one of set, cast, rename, drop")
        for target, expression in self.set.items():
            sql(self, f"set.{target}", expression)

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (*self.cast, *self.rename, *self.drop), fields)
        nested = tuple(target for target in self.set if "." in target)
        require_fields(self, nested, fields)

    def output_fields(self, fields: set[str] | None) -> set[str] | None:
        if fields is None:
            return None
        result = fields | {target.split(".", 1)[0] for target in self.set}
        result = {self.rename.get(name, name) for name in result}
        return result - set(self.drop)

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        frame = batch
        if self.set:
            computed = {t: sql(self, f"set.{t}", e) for t, e in self.set.items()}
            frame = frame.with_columns(_assignments(frame, computed))
        if self.cast:
            casts = {
                path: _cast(column(path), frame.select(column(path)).dtypes[0], _DTYPES[kind])
                for path, kind in self.cast.items()
            }
            frame = frame.with_columns(_assignments(frame, casts))
        if self.rename:
            frame = frame.rename(self.rename)
        if self.drop:
            frame = frame.drop(self.drop)
        return {MAIN: frame}


class Translate(Step, tag="translate"):
    """Map a record onto another shape: the output has exactly the mapped fields.

    The message translator of integration patterns: each target field is an expression over
    the input record; nothing else is kept but the envelope (fields outside the input's
    schema, in `_extra`, are dropped with the old shape). Stateless; order is kept.

    Args:
        mapping: target field (dotted for nested) → polars SQL expression over the input.

    >>> import polars as pl
    >>> step = Translate(mapping={"customer.id": "key", "total": "amount * 2"})
    >>> step.process(pl.DataFrame({"key": ["c1"], "amount": [2.0]}), None)["main"].to_dicts()
    [{'customer': {'id': 'c1'}, 'total': 4.0}]
    """

    mapping: dict[str, str]

    def __post_init__(self) -> None:
        if not self.mapping:
            raise ValueError("expected at least one mapped field")
        for target, expression in self.mapping.items():
            sql(self, f"mapping.{target}", expression)

    def output_fields(self, fields: set[str] | None) -> set[str] | None:
        envelope = {name for name in fields or () if name.startswith("_") and name != EXTRA}
        return envelope | {target.split(".", 1)[0] for target in self.mapping}

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        envelope = [name for name in batch.columns if name.startswith("_") and name != EXTRA]
        tree: dict[str, Any] = {}
        for target, expression in self.mapping.items():
            *parents, leaf = target.split(".")
            node = tree
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = sql(self, f"mapping.{target}", expression)
        return {MAIN: batch.select(*envelope, *_build(tree))}


def _cast(value: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    """`value` as `target`, null where it cannot be converted."""
    if target == pl.Boolean and source == pl.String:
        # polars cannot cast text to a boolean at all: read `true`/`false`, null otherwise
        text = value.str.to_lowercase()
        return pl.when(text == "true").then(True).when(text == "false").then(False)
    return value.cast(target, strict=False)


def _build(tree: Mapping[str, Any]) -> list[pl.Expr]:
    return [
        (pl.struct(_build(value)) if isinstance(value, Mapping) else value).alias(name)
        for name, value in tree.items()
    ]


def _assignments(frame: pl.DataFrame, values: Mapping[str, pl.Expr]) -> list[pl.Expr]:
    """Expressions assigning `values` to possibly nested target paths of `frame`."""
    return _assign(pl.col, dict(frame.schema), values)


def _assign(
    field: Callable[[str], pl.Expr],
    dtypes: Mapping[str, pl.DataType],
    values: Mapping[str, pl.Expr],
) -> list[pl.Expr]:
    """One expression per top-level name of `values`' paths; a dotted path rebuilds its
    struct with `with_fields`, keeping the siblings it does not set."""
    top: dict[str, pl.Expr] = {}
    nested: dict[str, dict[str, pl.Expr]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    expressions = [value.alias(name) for name, value in top.items()]
    for head, inner in nested.items():
        struct = field(head)
        inner_dtypes = {f.name: f.dtype for f in dtypes[head].fields}  # type: ignore[attr-defined]
        updates = _assign(struct.struct.field, inner_dtypes, inner)
        expressions.append(struct.struct.with_fields(updates).alias(head))
    return expressions
