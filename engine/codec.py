"""Raw message values ↔ columns, a whole batch per call, with bad-record isolation.

Decoding a batch of JSON values runs in three vectorised passes and one rare slow path:

1. *Screen* (numpy over the Arrow value buffer): per value, whether it looks like one complete
   JSON object on one line — first byte `{`, last byte `}`, braces balanced, no newline — and
   how many `:` bytes it holds.
2. *Read* the screened values in one `polars.read_ndjson` call against the schema's dtypes
   (values that failed the screen are replaced by `{}` so rows stay aligned). The reader nulls
   a value of the wrong JSON type rather than failing the batch.
3. *Prove* each row: it satisfies every schema rule (`Schema.valid`), and its `:` count equals
   the number of fields decoded, which proves it has no field the schema does not declare.
4. Every row not proven goes to the *slow path*: orjson per record, `Schema.check` for the
   exact reason, other fields kept in `_extra`. On W1 this is about 2 % of rows.

So a bad record never fails or slows the good records of its batch, and the good rows never
become Python objects.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.batch import (
    EXTRA,
    RAW,
    data_columns,
    dead_letters,
    newline_terminated,
    value_buffers,
)
from engine.schema import Schema

_ROW = "__row"
_EMPTY_OBJECT = pa.scalar(b"{}", pa.large_binary())


@dataclass(frozen=True)
class Decoded:
    """A decoded batch: rows that fit the schema, and dead letters for those that did not."""

    good: pl.DataFrame
    bad: pl.DataFrame


@dataclass(frozen=True)
class _Screen:
    complete: np.ndarray  # bool per value: one whole JSON object on one line
    colons: np.ndarray  # int per value: number of ':' bytes


def _screen(values: pa.LargeBinaryArray) -> _Screen:
    count = len(values)
    if count == 0:
        return _Screen(np.zeros(0, bool), np.zeros(0, np.int32))
    offsets, data = value_buffers(values)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    nonempty = lengths > 0
    # reduceat needs in-range starts; empty values are masked out below
    safe_starts = np.minimum(starts, max(len(data) - 1, 0))

    def per_value(byte_values: np.ndarray, dtype: type) -> np.ndarray:
        sums = np.add.reduceat(byte_values, safe_starts, dtype=dtype)
        return np.where(nonempty, sums, 0)

    # +1 per '{', -1 per '}': zero when balanced
    braces = (data == ord("{")).view(np.int8) - (data == ord("}")).view(np.int8)
    balanced = per_value(braces, np.int32) == 0
    colons = per_value((data == ord(":")).view(np.uint8), np.int32)
    first = data[safe_starts]
    last = data[np.maximum(ends - 1, 0)]
    complete = nonempty & (first == ord("{")) & (last == ord("}")) & balanced
    if np.count_nonzero(data == ord("\n")):
        # a newline inside a value would split it in two in the NDJSON read
        complete &= per_value((data == ord("\n")).view(np.uint8), np.int32) == 0
    return _Screen(complete, colons)


class JsonCodec:
    """Decode JSON values into schema columns and encode rows back to JSON, per batch.

    Values are UTF-8 JSON objects. Fields the schema does not declare are kept, as JSON, in
    the `_extra` column and written back on encode, so records pass through unchanged.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._polars_schema = schema.polars_schema()
        self._read_schema = schema.read_schema()
        self._conversions = schema.conversions()
        self._defaults = schema.defaults()
        self._no_rows = pl.DataFrame(schema=self._polars_schema)  # built once: ~1 ms here
        self._valid = schema.valid()
        self._key_count = schema.key_count()
        self._strings_ok = schema.strings_ok()
        self._list_items_ok = schema.list_items_ok()
        self._integral_floats = schema.integral_floats()
        self._screenable = schema.screenable

    def decode(self, batch: pl.DataFrame, stage: str) -> Decoded:
        """Split `batch` (with a `_raw` column) into decoded rows and dead letters.

        Rows keep their order and every envelope column; dead letters carry the reason,
        `stage` and the original bytes.
        """
        envelope = batch.drop(RAW).with_row_index(_ROW)
        values = batch[RAW].to_arrow().cast(pa.large_binary())
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        screen = _screen(values)
        decoded, readable = self._read(values, screen.complete)
        if self._conversions:
            decoded = decoded.with_columns(self._conversions)
        # The reader decodes `\u` escapes more leniently than JSON (a lone surrogate passes)
        # and an escaped field name hides from `_drop_integer_tokens`: such rows go slowly.
        readable &= ~batch[RAW].bin.contains(b"\\u").fill_null(True).to_numpy()
        if self._screenable:
            proven = decoded.select(
                pl.lit(pl.Series(readable))
                & self._valid
                & (self._key_count == pl.lit(pl.Series(screen.colons)))
                & self._strings_ok
                & self._list_items_ok
            ).to_series()
            proven = self._drop_integer_tokens(batch, decoded, proven)
        else:
            # a list of structs hides keys from the count: every row is checked one by one
            proven = pl.Series(np.zeros(batch.height, bool))
        fast = pl.concat([envelope, decoded], how="horizontal").filter(proven)
        fast = fast.with_columns(*self._defaults, pl.lit(None, pl.String).alias(EXTRA))
        if proven.all():
            return Decoded(fast.drop(_ROW), dead_letters(batch.clear(), "", stage))
        slow_rows = (~proven).arg_true()
        slow_good, slow_bad = self._decode_slowly(batch, envelope, slow_rows, stage)
        good = fast if slow_good.is_empty() else pl.concat([fast, slow_good]).sort(_ROW)
        return Decoded(good.drop(_ROW), slow_bad)

    def _drop_integer_tokens(
        self, batch: pl.DataFrame, decoded: pl.DataFrame, proven: pl.Series
    ) -> pl.Series:
        """Unprove rows whose `float` field was written as a JSON integer.

        Only rows with an integral value can be such rows (about 1 in 100 for prices with
        cents); their raw text is searched for the field followed by an integer token.
        """
        for name, integral in self._integral_floats:
            suspects = (decoded.select(integral).to_series().fill_null(False) & proven).arg_true()
            if suspects.is_empty():
                continue
            pattern = f'"{re.escape(name)}"\\s*:\\s*-?[0-9]+\\s*[,}}]'
            as_integer = (
                batch[RAW]
                .gather(suspects)
                .cast(pl.String, strict=False)
                .str.contains(pattern)
                .fill_null(True)
            )
            proven = proven.scatter(suspects.filter(as_integer), False)
        return proven

    def _read(
        self, values: pa.LargeBinaryArray, complete: np.ndarray
    ) -> tuple[pl.DataFrame, np.ndarray]:
        """Read the screened values in one call; an unscreened row becomes all nulls.

        Also returns, per value, whether it was screened and read: the nulls of a value the
        reader rejected would otherwise pass for `{}` when every field is optional.
        """
        masked = pc.if_else(pa.array(complete), values, _EMPTY_OBJECT)
        buffer = newline_terminated(masked)
        try:
            frame = pl.read_ndjson(io.BytesIO(buffer), schema=self._read_schema, ignore_errors=True)
            return frame, complete.copy()
        except pl.exceptions.ComputeError:
            # A value passed the screen but is not JSON the reader accepts (the screen is a
            # cheap necessary condition): read in parts so only the failing part is lost.
            frame, read = self._read_in_parts(masked)
            return frame, complete & read

    def _read_in_parts(self, masked: pa.LargeBinaryArray) -> tuple[pl.DataFrame, np.ndarray]:
        if len(masked) <= 16:
            rows = [self._read_one(value) for value in masked.to_pylist()]
            frame = pl.DataFrame([row for row, _ in rows], schema=self._read_schema, orient="row")
            return frame, np.array([read for _, read in rows], bool)
        middle = len(masked) // 2
        halves = [
            self._read(half, np.ones(len(half), bool))
            for half in (masked.slice(0, middle), masked.slice(middle))
        ]
        return (
            pl.concat([frame for frame, _ in halves]),
            np.concatenate([read for _, read in halves]),
        )

    def _read_one(self, value: bytes) -> tuple[tuple[Any, ...], bool]:
        unread = (None,) * len(self._read_schema)
        try:
            frame = pl.read_ndjson(io.BytesIO(value), schema=self._read_schema, ignore_errors=True)
        except pl.exceptions.ComputeError:
            return unread, False
        return (frame.row(0), True) if frame.height == 1 else (unread, False)

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
        bad = dead_letters(batch[bad_rows], pl.Series(reasons, dtype=pl.String), stage)
        return good, bad


def encode_json(frame: pl.DataFrame) -> pl.Series:
    """Encode each row's fields (not the envelope) as one JSON object; a String Series.

    A null field is left out, unless the record came in with an explicit null (kept in
    `_extra` with the fields the schema does not declare, and merged back): so a record
    passes through with exactly the fields it came in with. Rows with neither nulls nor
    `_extra` (W1's) are encoded in one columnar call; the others are fixed up one by one.
    """
    columns = data_columns(frame)
    encoded = frame.select(pl.struct(columns).struct.json_encode().alias("value")).to_series()
    # ':null' may also occur inside a string: such a row is merely fixed up needlessly
    to_fix = encoded.str.contains(":null", literal=True)
    if EXTRA in frame.columns:
        to_fix = to_fix | frame[EXTRA].is_not_null()
    if not to_fix.any():
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
