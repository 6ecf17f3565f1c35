"""File sources and sinks: NDJSON (one message value per line) and Parquet.

The NDJSON source reads the file in large blocks and splits lines with numpy: the values of
a batch share one Arrow buffer and never exist as Python objects.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engine import _native
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
from engine.connectors.encoding import encode_lines, is_dead_letter
from engine.errors import CheckpointError, ConnectorError
from engine.json_scan import arrow_buffer

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
        """The file's lines, a block at a time; a line cut by a block's end is moved to the
        front of the buffer and completed by the next read."""
        buffer = bytearray(_BLOCK_BYTES)
        filled = 0
        with self.path.open("rb", buffering=0) as file:
            while True:
                if filled == len(buffer):  # one line longer than the buffer
                    buffer.extend(bytearray(len(buffer)))
                with memoryview(buffer) as view:
                    read = file.readinto(view[filled:])
                    filled += read or 0
                    lines, consumed = _split_lines(view[:filled], final=not read)
                if len(lines):
                    yield lines
                buffer[: filled - consumed] = buffer[consumed:filled]
                filled -= consumed
                if not read:
                    return


def _split_lines(data: memoryview | bytes, *, final: bool) -> tuple[pa.LargeBinaryArray, int]:
    """The lines of `data` as values, without their newlines (nor a `\r` before one), and
    how many bytes they took; with `final`, text after the last newline is a line too."""
    count, consumed, offsets, values = _native.split_lines(data, final)
    lines = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), count, [None, arrow_buffer(offsets), arrow_buffer(values)]
    )
    return lines, consumed


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


@dataclass(frozen=True)
class NdjsonSplit:
    """Bytes [start, end) of an NDJSON file: the lines `first_line`, `first_line + 1`, ...

    A distributed runner hands splits to workers, which read them themselves; the lines of
    a split are exactly those of one `NdjsonSource` batch.
    """

    path: str
    start: int
    end: int
    first_line: int

    def read(self) -> pl.DataFrame:
        """The split's lines as one undecoded batch, as `NdjsonSource` yields it."""
        with open(self.path, "rb") as file:
            file.seek(self.start)
            data = file.read(self.end - self.start)
        lines, _ = _split_lines(data, final=True)  # the file's last line may have no newline
        return _raw_frame(lines, self.first_line)


def ndjson_splits(
    path: str | Path, batch_size: int, start: int = 0, first_line: int = 0
) -> Iterator[NdjsonSplit]:
    """Cut the file from byte `start` (line `first_line`) into splits of `batch_size` lines.

    Only newlines are looked at (numpy over 8 MiB blocks), so enumerating costs a fraction
    of reading the lines into batches.
    """
    path = Path(path)
    if not path.is_file():
        raise ConnectorError(f"NDJSON source: no such file: {path}")
    split_start, line = start, first_line
    in_split = 0  # lines of the current split seen so far
    with path.open("rb") as file:
        file.seek(start)
        block_start = start
        while block := file.read(_BLOCK_BYTES):
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n")) + 1
            taken = 0
            while len(ends) - taken >= batch_size - in_split:
                taken += batch_size - in_split
                end = block_start + int(ends[taken - 1])
                yield NdjsonSplit(str(path), split_start, end, line)
                split_start, line, in_split = end, line + batch_size, 0
            in_split += len(ends) - taken
            block_start += len(block)
    if block_start > split_start:  # lines after the last full split, the last maybe unended
        yield NdjsonSplit(str(path), split_start, block_start, line)


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
            yield _with_envelope(record_batch, offset)
            offset += record_batch.num_rows


@dataclass(frozen=True)
class ParquetSplit:
    """One row group of a Parquet file, as one batch; its first row is row `first_row`."""

    path: str
    row_group: int
    first_row: int

    def read(self) -> pl.DataFrame:
        return _with_envelope(
            pq.ParquetFile(self.path).read_row_group(self.row_group), self.first_row
        )


def parquet_splits(path: str | Path, start_group: int = 0) -> Iterator[ParquetSplit]:
    """One split per row group, from row group `start_group`."""
    path = Path(path)
    if not path.is_file():
        raise ConnectorError(f"Parquet source: no such file: {path}")
    metadata = pq.ParquetFile(path).metadata
    first_row = sum(metadata.row_group(group).num_rows for group in range(start_group))
    for group in range(start_group, metadata.num_row_groups):
        yield ParquetSplit(str(path), group, first_row)
        first_row += metadata.row_group(group).num_rows


def _with_envelope(rows: pa.RecordBatch | pa.Table, first_row: int) -> pl.DataFrame:
    """Columnar rows with the envelope a message source gives (offset: the row number)."""
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    count = frame.height
    return frame.with_columns(
        pl.lit(None, pl.Binary).alias(KEY),
        pl.lit(0, pl.Int32).alias(PARTITION),
        pl.Series(OFFSET, np.arange(first_row, first_row + count, dtype=np.int64)),
        pl.lit(None, pl.Int64).alias(TIMESTAMP),
        pl.lit(None, HEADER_DTYPE).alias(HEADERS),
    )


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
            await self.append([encode_lines(frame)])

    async def append(self, bodies: list[pa.Buffer]) -> None:
        """Write NDJSON bodies encoded elsewhere (`encode_lines`), in order: a distributed
        runner's workers encode, and its writer only appends."""
        await self.start()
        assert self._file is not None
        for body in bodies:
            self._file.write(body)

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
