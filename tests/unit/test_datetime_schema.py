"""Date-time fields: RFC 3339 text with an offset, decoded to UTC and written back."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import orjson

from engine.batch import raw_batch
from engine.codec import JsonCodec, encode_json
from engine.schema import Schema


class Booking(msgspec.Struct):
    id: str
    at: datetime


def test_offsets_are_normalised_to_utc_and_round_trip() -> None:
    codec = JsonCodec(Schema.of(Booking))
    decoded = codec.decode(
        raw_batch(
            [
                b'{"id": "a", "at": "2026-01-01T02:00:00+02:00"}',
                b'{"id": "b", "at": "2026-01-01T00:00:00.5Z"}',
            ]
        ),
        "decode",
    )
    assert decoded.good["at"].to_list() == [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
    ]
    assert [orjson.loads(v) for v in encode_json(decoded.good).to_list()] == [
        {"id": "a", "at": "2026-01-01T00:00:00+00:00"},
        {"id": "b", "at": "2026-01-01T00:00:00.500+00:00"},
    ]


def test_naive_or_non_text_times_are_dead_letters_naming_the_field() -> None:
    decoded = JsonCodec(Schema.of(Booking)).decode(
        raw_batch([b'{"id": "a", "at": "2026-01-01T00:00:00"}', b'{"id": "b", "at": 17}']),
        "decode",
    )
    assert decoded.good.is_empty()
    assert decoded.bad["_reason"].to_list() == [
        "at: expected an RFC 3339 date-time with an offset, got '2026-01-01T00:00:00'",
        "at: expected an RFC 3339 date-time with an offset, got 17",
    ]
