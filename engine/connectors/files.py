"""File sources and sinks: NDJSON (one message value per line) and Parquet.

The NDJSON source reads the file in large blocks and splits lines with numpy: the values of
a batch share one Arrow buffer and never exist as Python objects.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engine.batch import (
    HEADER_ARROW_TYPE,
    HEADER_DTYPE,
    HEADERS,
    KEY,
    OFFSET,
    PARTITION,
    RAW,
    TIMESTAMP,
    data_columns,
)
from engine.connectors.base import SinkPosition
from engine.connectors.encoding import encode_values, is_dead_letter
from engine.errors import CheckpointError, ConnectorError

_BLOCK_BYTES = 8 << 20


class NdjsonSource:
    """Yields undecoded batches of `batch_size` lines (the last may be shorter).

    A line is one value; a trailing `\\r` is dropped with its `\\n`, and a final line without
    `\\n` counts. `_offset` is the line number, counted from 0.
    """

    def __init__(self, path: str | Path, batch_size: int = 10_000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size

    async def batches(self) -> AsyncIterator[pl.DataFrame]:
        if not self.path.is_file():
            raise ConnectorError(f"NDJSON source: no such file: {self.path}")
        line_number = 0
        leftover: pa.LargeBinaryArray | None = None
        for values in self._blocks():
            start = 0
            if leftover is not None:
                # complete the batch begun in the previous block with this block's head
                start = min(self.batch_size - len(leftover), len(values))
                leftover = pa.concat_arrays([leftover, values.slice(0, start)])
                if len(leftover) < self.batch_size:
                    continue
                yield _raw_frame(leftover, line_number)
                line_number += len(leftover)
                leftover = None
            while len(values) - start >= self.batch_size:
                yield _raw_frame(values.slice(start, self.batch_size), line_number)
                line_number += self.batch_size
                start += self.batch_size
            if start < len(values):
                leftover = values.slice(start)
        if leftover is not None and len(leftover):
            yield _raw_frame(leftover, line_number)

    def _blocks(self) -> Iterator[pa.LargeBinaryArray]:
        carry = b""
        with self.path.open("rb") as file:
            while block := file.read(_BLOCK_BYTES):
                data = carry + block
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    yield _split_lines(data[:cut])
        if carry:
            yield _split_lines(carry + b"\n")


def _split_lines(data: bytes) -> pa.LargeBinaryArray:
    """Lines of `data` (which ends with a newline) as values, newlines removed."""
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    count = len(newlines)
    starts = np.concatenate(([0], newlines[:-1] + 1))
    if b"\r" not in data:
        values = data.replace(b"\n", b"")  # memchr-fast; positions shift by one per line
        offsets = np.append(starts - np.arange(count), len(values)).astype(np.int64)
        return _binary_array(count, offsets, values)
    raw = np.frombuffer(data, np.uint8)
    ends = newlines.copy()
    has_cr = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == ord("\r"))
    ends[has_cr] -= 1
    keep = np.ones(len(raw), bool)
    keep[newlines] = False
    keep[ends[has_cr]] = False
    # positions shift left by the separators removed before each line
    removed_before = np.arange(count) + np.concatenate(([0], np.cumsum(has_cr)[:-1]))
    offsets = np.append(starts - removed_before, count and len(raw) - count - int(has_cr.sum()))
    return _binary_array(count, offsets.astype(np.int64), raw[keep].tobytes())


def _binary_array(count: int, offsets: np.ndarray, values: bytes) -> pa.LargeBinaryArray:
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(values)]
    )


def _raw_frame(values: pa.LargeBinaryArray, first_line: int) -> pl.DataFrame:
    count = len(values)
    columns = {
        RAW: values,
        KEY: pa.nulls(count, pa.binary()),
        PARTITION: pa.array(np.zeros(count, np.int32)),
        OFFSET: pa.array(np.arange(first_line, first_line + count, dtype=np.int64)),
        TIMESTAMP: pa.nulls(count, pa.int64()),
        HEADERS: pa.nulls(count, HEADER_ARROW_TYPE),
    }
    frame = pl.from_arrow(pa.table(columns))
    assert isinstance(frame, pl.DataFrame)
    return frame


class ParquetSource:
    """Yields already-columnar batches from a Parquet file (no decode step needed)."""

    def __init__(self, path: str | Path, batch_size: int = 10_000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size

    async def batches(self) -> AsyncIterator[pl.DataFrame]:
        if not self.path.is_file():
            raise ConnectorError(f"Parquet source: no such file: {self.path}")
        offset = 0
        for record_batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_size):
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            count = frame.height
            yield frame.with_columns(
                pl.lit(None, pl.Binary).alias(KEY),
                pl.lit(0, pl.Int32).alias(PARTITION),
                pl.Series(OFFSET, np.arange(offset, offset + count, dtype=np.int64)),
                pl.lit(None, pl.Int64).alias(TIMESTAMP),
                pl.lit(None, HEADER_DTYPE).alias(HEADERS),
            )
            offset += count


class NdjsonSink:
    """Appends one JSON value per line; dead letters as `{"reason", "raw"}`.

    A run starts the file afresh; a run resumed from a checkpoint (`resume`) cuts it back to
    the length the checkpoint recorded, so the lines written after it are written once,
    by the resumed run. `position` flushes and fsyncs the file before it says its length.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        """Create or empty the file; `write` does it when not done before."""
        if self._file is None:
            self._file = self.path.open("wb")

    async def resume(self, position: SinkPosition | None) -> None:
        """Open the file cut back to `position`'s byte length (None: empty).

        Raises CheckpointError when the file is shorter than that (changed since).
        """
        length = 0 if position is None else position.at
        if not isinstance(length, int):
            raise CheckpointError(
                f"NDJSON sink {str(self.path)!r}: a checkpoint's position must be a byte "
                f"length, got {length!r} (was the sink another kind?)"
            )
        file = self.path.open("r+b" if self.path.exists() else "wb")
        size = file.seek(0, os.SEEK_END)
        if size < length:
            file.close()
            raise CheckpointError(
                f"NDJSON sink {str(self.path)!r}: the file has {size} bytes, fewer than the "
                f"{length} the checkpoint recorded: it was changed since; start again with "
                "an empty checkpoint directory"
            )
        file.truncate(length)
        file.seek(length)
        self._file = file

    async def position(self) -> SinkPosition:
        """The file's length, once everything written is on disk."""
        await self.start()
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        return SinkPosition(self._file.tell())

    async def write(self, frame: pl.DataFrame) -> None:
        if frame.height:
            await self.start()
            assert self._file is not None
            text = encode_values(frame).str.join("\n").item()
            self._file.write(text.encode())
            self._file.write(b"\n")

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ParquetSink:
    """Writes records' fields as Parquet columns (dead letters: reason, stage, raw)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = None

    async def write(self, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        columns = ["_reason", "_stage", RAW] if is_dead_letter(frame) else data_columns(frame)
        table = frame.select(columns).to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
