"""Decode: raw message values into typed columns, per the pipeline's message schema."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Literal

import msgspec
import polars as pl

from engine.batch import EXTRA, RAW
from engine.codec import JsonCodec, MsgpackCodec
from engine.errors import ConfigError
from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step
from engine.schema import Schema

_DECLARED: dict[str, type[msgspec.Struct]] = {}


def schema_path(struct_type: type[msgspec.Struct]) -> str:
    """The `module:StructName` naming `struct_type`; remembered so it resolves in-process."""
    path = f"{struct_type.__module__}:{struct_type.__qualname__}"
    _DECLARED[path] = struct_type
    return path


def resolve_schema(path: str) -> type[msgspec.Struct]:
    """The schema named `package.module:StructName` (declared in-process, or imported)."""
    if path in _DECLARED:
        return _DECLARED[path]
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"schema {path!r}: expected 'module:StructName'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"schema {path!r}: cannot import it: {error}") from error
    if not (isinstance(found, type) and issubclass(found, msgspec.Struct)):
        raise ConfigError(f"schema {path!r}: expected a msgspec.Struct, got {found!r}")
    return found


class Decode(Step, tag="decode"):
    """Decode each raw value (`_raw`) into the columns of `schema`; bad values dead-letter.

    Guarantees: every value either becomes a row with every schema field, type-checked and
    rule-checked (see `engine.schema`), or a dead letter naming the field that was wrong,
    with the original bytes. Fields the schema does not declare are carried in `_extra`.
    Order is kept. Cost: one columnar read per batch; per-record work only for bad values.

    Args:
        schema: the message schema, as `module:StructName` (a `msgspec.Struct`).
        format: `json` (UTF-8 JSON objects) or `msgpack` (MessagePack maps).

    >>> import polars as pl
    >>> from engine.batch import raw_batch
    >>> step = Decode(schema="engine.schema_examples:Greeting", name="decode")
    >>> out = step.process(raw_batch([b'{"text": "hi"}', b'{"text": 1}']), None)
    >>> out["main"]["text"].to_list(), out["dead_letter"]["_reason"].to_list()
    (['hi'], ['text: expected a string, got int'])
    """

    schema: str
    format: Literal["json", "msgpack"] = "json"

    def __post_init__(self) -> None:
        if ":" not in self.schema:
            raise ValueError(f"expected 'module:StructName', got {self.schema!r}")

    def output_fields(self, fields: set[str] | None) -> set[str] | None:
        schema_fields = set(Schema.of(resolve_schema(self.schema)).polars_schema())
        envelope = {name for name in fields or () if name != RAW}
        return envelope | schema_fields | {EXTRA}

    def check(self, fields: set[str] | None) -> None:
        resolve_schema(self.schema)
        if fields is not None and RAW not in fields:
            raise ConfigError(f"step {self.name!r} (decode): its input is already decoded")

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        decoded = _codec(self.schema, self.format).decode(batch, self.name or self.op)
        return {MAIN: decoded.good, DEAD_LETTER: decoded.bad}


@cache
def _codec(schema: str, format: str) -> JsonCodec | MsgpackCodec:
    """Compile a codec once per schema and format; codecs hold no data."""
    compiled = Schema.of(resolve_schema(schema))
    return JsonCodec(compiled) if format == "json" else MsgpackCodec(compiled)
