"""Kafka record sets read natively give exactly what aiokafka reads from the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _native
from engine.connectors.kafka_fetch import _binary, _buffer

Record = tuple[bytes | None, bytes | None, int]  # key, value, timestamp


def record_batch(base_offset: int, records: list[Record], **options: object) -> bytes:
    """A v2 record batch as aiokafka's producer builds it, starting at `base_offset`."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=options.get("compression", 0),
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for delta, (key, value, timestamp) in enumerate(records):
        headers = [("h", b"x")] if options.get("headers") else []
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=headers)
    built = bytearray(builder.build())
    built[0:8] = base_offset.to_bytes(8, "big")
    return bytes(built)


def read_by_aiokafka(data: bytes, fetch_offset: int) -> list[tuple]:
    records, read = MemoryRecords(data), []
    while records.has_next():
        for record in records.next_batch():
            if record.offset >= fetch_offset:
                read.append((record.offset, record.timestamp, record.key, record.value))
    return read


def read_natively(data: bytes, fetch_offset: int, max_records: int) -> tuple[list[tuple], int]:
    read = _native.kafka_records(data, fetch_offset, max_records)
    assert read is not None
    count, next_offset, _, values, keys, offsets, timestamps = read
    if not count:
        return [], next_offset
    rows = zip(
        np.frombuffer(_buffer(offsets), np.int64).tolist(),
        np.frombuffer(_buffer(timestamps), np.int64).tolist(),
        _binary(keys).to_pylist(),
        _binary(values).to_pylist(),
        strict=True,
    )
    return list(rows), next_offset


keys_and_values = st.one_of(st.none(), st.binary(max_size=40))
batches_of_records = st.lists(
    st.lists(st.tuples(keys_and_values, keys_and_values, st.integers(0, 2**41)), min_size=1),
    min_size=1,
    max_size=4,
)


@settings(max_examples=80, deadline=None)
@given(batches=batches_of_records, data=st.data())
def test_native_reading_matches_aiokafka_in_pieces_of_any_size(
    batches: list[list[Record]], data: st.DataObject
) -> None:
    offset, raw = 100, b""
    for records in batches:
        raw += record_batch(offset, records)
        offset += len(records)
    expected = read_by_aiokafka(raw, 0)
    start = data.draw(st.integers(0, 100 + len(expected)))
    got, position = [], start
    for _ in range(len(expected) + 2):  # piece by piece, as max_records cuts them
        piece, position = read_natively(raw, position, data.draw(st.integers(1, 5)))
        got += piece
    assert got == [row for row in expected if row[0] >= start]
    assert position == max(start, offset)


def test_record_sets_native_code_does_not_read_are_left_to_aiokafka() -> None:
    plain = [(b"k", b"v", 1)]
    assert _native.kafka_records(record_batch(0, plain, headers=True), 0, 10) is None
    assert _native.kafka_records(record_batch(0, plain, compression=1), 0, 10) is None


def test_a_batch_cut_short_waits_for_the_next_fetch_and_a_bad_crc_is_an_error() -> None:
    first, second = record_batch(0, [(b"a", b"1", 5)]), record_batch(1, [(b"b", b"2", 6)])
    rows, position = read_natively(first + second[:-3], 0, 10)
    assert (rows, position) == ([(0, 5, b"a", b"1")], 1)
    corrupt = bytearray(first)
    corrupt[-1] ^= 1
    with pytest.raises(ValueError, match="corrupt Kafka record batch"):
        _native.kafka_records(bytes(corrupt), 0, 10)


def columns(items: list[bytes | None]) -> tuple[bytes, bytes, bytes]:
    offsets, data = [0], b""
    for item in items:
        data += item or b""
        offsets.append(len(data))
    return np.array(offsets, np.int64).tobytes(), data, bytes(i is not None for i in items)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(keys_and_values, keys_and_values), min_size=1, max_size=30),
    max_bytes=st.integers(1, 600),
    data=st.data(),
)
def test_batches_built_natively_read_back_in_aiokafka_as_written(
    rows: list[tuple[bytes | None, bytes | None]], max_bytes: int, data: st.DataObject
) -> None:
    keys, values = columns([k for k, _ in rows]), columns([v for _, v in rows])
    # a partition's rows, in the order given, picked from columns holding other rows too
    picked = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, unique=True))
    read, start = [], 0
    while start < len(picked):  # size-bound batches, each taking at least one row
        batch, end = _native.kafka_batch(
            keys, values, np.array(picked, np.int64), start, max_bytes, 1_700_000_000_123
        )
        assert end > start
        assert end == start + 1 or len(batch) <= max_bytes
        records = MemoryRecords(batch).next_batch()
        assert records.validate_crc()
        batch_rows = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in records]
        # offsets are relative to the batch: the broker gives it its base offset
        assert [offset for offset, *_ in batch_rows] == list(range(end - start))
        read += batch_rows
        start = end
    assert [(k, v) for _, _, k, v, _ in read] == [rows[row] for row in picked]
    assert all(ts == 1_700_000_000_123 and not headers for _, ts, _, _, headers in read)
