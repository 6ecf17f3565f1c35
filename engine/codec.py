"""Raw message values ↔ columns, a whole batch per call, with bad-record isolation.

Decoding a batch of JSON values takes one native pass and one rare slow path:

1. *Scan* (`engine.json_scan`, C): each value is parsed strictly, straight into the Arrow
   buffers of the schema's columns. A value the scanner is not sure of (not JSON, a wrong
   JSON type, an unknown or repeated field, an explicit null, ...) is left unread.
2. *Prove* each read row over whole columns: it satisfies every rule of the schema
   (`Schema.valid`: patterns, choices, bounds), and its date-times parse.
3. Every row not proven goes to the *slow path*: orjson per record, `Schema.check` for the
   exact reason, other fields kept in `_extra`. On W1 these are exactly the bad rows, 1 %.

So a bad record never fails or slows the good records of its batch, and the good rows never
become Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.batch import EXTRA, RAW, data_columns, dead_letters, value_buffers
from engine.json_scan import JsonScanner
from engine.json_write import write_json, write_json_lines
from engine.schema import Schema

_ROW = "__row"


@dataclass(frozen=True)
class Decoded:
    """A decoded batch: rows that fit the schema, and dead letters for those that did not."""

    good: pl.DataFrame
    bad: pl.DataFrame


class JsonCodec:
    """Decode JSON values into schema columns and encode rows back to JSON, per batch.

    Values are UTF-8 JSON objects. Fields the schema does not declare are kept, as JSON, in
    the `_extra` column and written back on encode, so records pass through unchanged.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._polars_schema = schema.polars_schema()
        self._scanner = JsonScanner(schema)
        self._conversions = schema.conversions()
        self._datetimes_present = schema.datetimes_present()
        self._defaults = schema.defaults()
        self._no_rows = pl.DataFrame(schema=self._polars_schema)  # built once: ~1 ms here
        self._valid = schema.valid()

    def decode(self, batch: pl.DataFrame, stage: str) -> Decoded:
        """Split `batch` (with a `_raw` column) into decoded rows and dead letters.

        Rows keep their order and every envelope column; dead letters carry the reason,
        `stage` and the original bytes.
        """
        envelope = batch.drop(RAW).with_row_index(_ROW)
        values = batch[RAW].to_arrow().cast(pa.large_binary())
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        columns, read = self._scanner.scan(values)
        decoded = pl.from_arrow(columns)
        assert isinstance(decoded, pl.DataFrame)
        proven = pl.Series(read)
        if self._conversions:
            # a date-time whose text does not parse converts to null: count them either side
            present = decoded.select(self._datetimes_present).to_series()
            decoded = decoded.with_columns(self._conversions)
            proven &= decoded.select(self._datetimes_present).to_series() == present
        proven = decoded.select(pl.lit(proven) & self._valid).to_series()
        fast = pl.concat([envelope, decoded], how="horizontal").filter(proven)
        fast = fast.with_columns(*self._defaults, pl.lit(None, pl.String).alias(EXTRA))
        if proven.all():
            return Decoded(fast.drop(_ROW), dead_letters(batch.clear(), "", stage))
        slow_rows = (~proven).arg_true()
        slow_good, slow_bad = self._decode_slowly(batch, envelope, slow_rows, stage)
        good = fast if slow_good.is_empty() else pl.concat([fast, slow_good]).sort(_ROW)
        return Decoded(good.drop(_ROW), slow_bad)

    def _decode_slowly(
        self, batch: pl.DataFrame, envelope: pl.DataFrame, rows: pl.Series, stage: str
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Decode the unproven rows one by one: exact verdicts, reasons and extra fields."""
        raw_values = batch[RAW].gather(rows).to_list()
        good_rows: list[int] = []
        good_known: list[dict[str, Any]] = []
        good_extra: list[str | None] = []
        bad_rows: list[int] = []
        reasons: list[str] = []
        for row, raw in zip(rows.to_list(), raw_values, strict=True):
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                bad_rows.append(row)
                reasons.append(f"value is not valid JSON: {error}")
                continue
            reason = self.schema.check(value)
            if reason is not None:
                bad_rows.append(row)
                reasons.append(reason)
                continue
            known, extra = self.schema.row(value)
            good_rows.append(row)
            good_known.append(known)
            good_extra.append(None if extra is None else orjson.dumps(extra).decode())
        bad = dead_letters(batch[bad_rows], pl.Series(reasons, dtype=pl.String), stage)
        if not good_rows:  # the usual case: the scanner leaves only the bad rows unread
            return envelope.clear(), bad
        good = pl.concat(
            [
                envelope[good_rows],
                pl.DataFrame(good_known, schema=self._polars_schema, orient="row")
                if good_known
                else self._no_rows,
                pl.DataFrame({EXTRA: pl.Series(EXTRA, good_extra, pl.String)}),
            ],
            how="horizontal",
        )
        return good, bad


def encode_json(frame: pl.DataFrame) -> pl.Series:
    """Encode each row's fields (not the envelope) as one JSON object; a String Series.

    A null field is left out, unless the record came in with an explicit null (kept in
    `_extra` with the fields the schema does not declare, and merged back): so a record
    passes through with exactly the fields it came in with. Rows without `_extra` (W1's)
    are written in one native pass (`engine.json_write`); the others are fixed up one by one.
    """
    encoded, text_nulls = write_json(frame, data_columns(frame))
    to_fix = frame[EXTRA].is_not_null() if _carries_extra(frame) else None
    if text_nulls is not None:
        to_fix = text_nulls if to_fix is None else to_fix | text_nulls
    if to_fix is None or not to_fix.any():
        return encoded
    rows = to_fix.arg_true()
    extras = frame[EXTRA].gather(rows).to_list() if EXTRA in frame.columns else [None] * len(rows)
    fixed = [
        orjson.dumps(
            _merge(_without_nulls(orjson.loads(value)), orjson.loads(extra) if extra else {})
        ).decode()
        for value, extra in zip(encoded.gather(rows).to_list(), extras, strict=True)
    ]
    return encoded.scatter(rows, fixed)


def encode_json_lines(frame: pl.DataFrame) -> pa.Buffer | None:
    """The rows as `encode_json` encodes them, as an NDJSON body (each value followed by a
    newline) written in one native pass into one buffer, with no per-row values built
    first; None when some row needs `encode_json`'s fix-ups (`_extra`, text columns)."""
    if _carries_extra(frame):
        return None
    return write_json_lines(frame, data_columns(frame))


def _carries_extra(frame: pl.DataFrame) -> bool:
    """Whether some row has fields the schema does not declare (or explicit nulls)."""
    return EXTRA in frame.columns and frame[EXTRA].null_count() < frame.height


def _without_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _without_nulls(item) if isinstance(item, dict) else item
        for name, item in value.items()
        if item is not None
    }


def _merge(value: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for name, item in extra.items():
        if isinstance(item, dict) and isinstance(value.get(name), dict):
            _merge(value[name], item)
        else:
            value[name] = item
    return value


class MsgpackCodec:
    """Decode MessagePack maps into schema columns and encode rows back, per batch.

    The batch's values are framed as one MessagePack array and decoded by msgspec in one
    call against the schema's Struct; if any value fails, each value is decoded alone so
    that only the bad ones dead-letter. msgspec's rules apply (a MessagePack integer is
    accepted for a `float` field) and fields the schema does not declare are not kept.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._polars_schema = schema.polars_schema()
        self._batch_decoder = msgspec.msgpack.Decoder(list[schema.struct_type])
        self._framing_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self._decoder = msgspec.msgpack.Decoder(schema.struct_type)

    def decode(self, batch: pl.DataFrame, stage: str) -> Decoded:
        envelope = batch.drop(RAW)
        values = batch[RAW].to_arrow().cast(pa.large_binary())
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        framed = _msgpack_array(values)
        try:
            # Framing is only sound if every value is exactly one MessagePack object: a value
            # cut short could otherwise borrow the next value's bytes and both would "decode".
            elements = self._framing_decoder.decode(framed)
            lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
            if len(elements) != len(values) or any(
                len(element) != length for element, length in zip(elements, lengths, strict=True)
            ):
                return self._decode_each(batch, envelope, stage)
            structs = self._batch_decoder.decode(framed)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._decode_each(batch, envelope, stage)
        rows = pl.DataFrame(msgspec.to_builtins(structs), schema=self._polars_schema, orient="row")
        good = pl.concat([envelope, rows], how="horizontal")
        return Decoded(
            good.with_columns(pl.lit(None, pl.String).alias(EXTRA)),
            dead_letters(batch.clear(), "", stage),
        )

    def _decode_each(self, batch: pl.DataFrame, envelope: pl.DataFrame, stage: str) -> Decoded:
        good_rows: list[int] = []
        good: list[Any] = []
        bad_rows: list[int] = []
        reasons: list[str] = []
        for row, raw in enumerate(batch[RAW].to_list()):
            try:
                good.append(self._decoder.decode(raw))
                good_rows.append(row)
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                bad_rows.append(row)
                reasons.append(str(error))
        rows = pl.DataFrame(msgspec.to_builtins(good), schema=self._polars_schema, orient="row")
        decoded = pl.concat([envelope[good_rows], rows], how="horizontal")
        return Decoded(
            decoded.with_columns(pl.lit(None, pl.String).alias(EXTRA)),
            dead_letters(batch[bad_rows], pl.Series(reasons, dtype=pl.String), stage),
        )


def _msgpack_array(values: pa.LargeBinaryArray) -> memoryview | bytes:
    """Frame concatenated MessagePack values as one array, without copying each value."""
    count = len(values)
    offsets, data = value_buffers(values)
    body = data[offsets[0] : offsets[-1]]
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 65536:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + bytes(body)


def encode_msgpack(frame: pl.DataFrame) -> list[bytes]:
    """Encode each row's fields (not the envelope) as a MessagePack map."""
    encoder = msgspec.msgpack.Encoder()
    return [encoder.encode(row) for row in frame.select(data_columns(frame)).to_dicts()]
