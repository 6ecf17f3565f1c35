"""Tumbling windows of counts and integer sums, kept by native code (`engine/native/windows.c`).

`TumblingWindow` hands a batch here when its windows fit the native table: one string key
field, aggregates that are `count()` or `sum(f)` of an integer field. The table applies the
window steps' model row by row (see `engine.operators.window`) and holds the open windows
and each partition's progress itself; `NativeWindows.frames` turns them into the
`WindowState` tables (same columns, same order) for snapshots and for the polars path, and
`NativeWindows.from_frames` back, so a step can move between the two at any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from engine import _native
from engine.batch import KEY, PARTITION, binary_array, binary_columns, numpy_column
from engine.operators.window_columns import (
    FIRST_KEY,
    FIRST_SEQUENCE,
    LAST_SEQUENCE,
    MAX_EVENT_TIME,
    ROWS_SEEN,
    WINDOW_END,
    WINDOW_START,
)


@dataclass(frozen=True)
class Layout:
    """What a table needs of its step: the key field, window size, lateness and, per
    accumulator, its state column, `"c"` (count) or `"s"` (sum), its field and its output."""

    key: str
    size_ms: int
    allowed_lateness_ms: int
    accumulators: tuple[tuple[str, str, str | None, str], ...]

    def fits(self, schema: pl.Schema) -> bool:
        """Whether a batch of this schema can go to the table."""
        if schema.get(self.key) != pl.String or schema.get(KEY) != pl.Binary:
            return False
        summed = [field for _, op, field, _ in self.accumulators if op == "s"]
        return all(_integer(schema.get(field)) for field in summed)


class NativeWindows:
    """A step's open windows and partition progress in a native table."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        ops = "".join(op for _, op, _, _ in layout.accumulators).encode()
        self.table = _native.TumblingTable(layout.size_ms, layout.allowed_lateness_ms, ops)

    def process(self, batch: pl.DataFrame, times: pl.Series) -> tuple[pl.DataFrame, np.ndarray]:
        """Add `batch`'s rows (event times `times`, none null) to their windows: the windows
        now closed, as the step emits them, and which rows were late."""
        values = [
            _int64(batch[field]) if op == "s" else b""
            for _, op, field, _ in self.layout.accumulators
        ]
        late, closed = self.table.process(
            numpy_column(batch[PARTITION], np.int32),
            numpy_column(times, np.int64),
            binary_columns(batch[self.layout.key]),
            binary_columns(batch[KEY]),
            values,
        )
        return self._emitted(closed), np.frombuffer(late, np.bool_)

    def _emitted(self, columns: tuple) -> pl.DataFrame:
        partitions, starts, keys, first_keys, _, _, accumulators = columns
        start = np.frombuffer(starts, np.int64)
        return pl.DataFrame(
            [
                _series(self.layout.key, keys, pa.large_string()),
                pl.Series(WINDOW_START, start),
                pl.Series(WINDOW_END, start + self.layout.size_ms),
                *(
                    pl.Series(output, np.frombuffer(values, np.int64))
                    for (_, _, _, output), values in zip(
                        self.layout.accumulators, accumulators, strict=True
                    )
                ),
                pl.Series(PARTITION, np.frombuffer(partitions, np.int32)),
                _series(KEY, first_keys, pa.large_binary()),
            ]
        )

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The open windows and the partitions' progress as `WindowState` holds them."""
        partitions, starts, keys, first_keys, first, last, accumulators = self.table.windows()
        start = np.frombuffer(starts, np.int64)
        windows = pl.DataFrame(
            [
                pl.Series(PARTITION, np.frombuffer(partitions, np.int32)),
                _series(self.layout.key, keys, pa.large_string()),
                pl.Series(WINDOW_START, start),
                pl.Series(WINDOW_END, start + self.layout.size_ms),
                pl.Series(FIRST_SEQUENCE, np.frombuffer(first, np.int64)),
                pl.Series(LAST_SEQUENCE, np.frombuffer(last, np.int64)),
                _series(FIRST_KEY, first_keys, pa.large_binary()),
                *(
                    pl.Series(column, np.frombuffer(values, np.int64))
                    for (column, _, _, _), values in zip(
                        self.layout.accumulators, accumulators, strict=True
                    )
                ),
            ]
        )
        progress = sorted(self.table.progress(), key=lambda entry: entry[0])
        partitions_frame = pl.DataFrame(
            progress,
            schema={PARTITION: pl.Int32(), MAX_EVENT_TIME: pl.Int64(), ROWS_SEEN: pl.Int64()},
            orient="row",
        )
        return windows, partitions_frame

    @classmethod
    def from_frames(
        cls, layout: Layout, windows: pl.DataFrame, partitions: pl.DataFrame
    ) -> NativeWindows:
        """A table holding the `WindowState` tables' windows and progress."""
        native = cls(layout)
        for partition, largest, seen in partitions.iter_rows():
            native.table.set_progress(partition, largest, seen)
        if windows.height:
            native.table.add_windows(
                (
                    numpy_column(windows[PARTITION], np.int32),
                    numpy_column(windows[WINDOW_START], np.int64),
                    binary_columns(windows[layout.key]),
                    binary_columns(windows[FIRST_KEY]),
                    numpy_column(windows[FIRST_SEQUENCE], np.int64),
                    numpy_column(windows[LAST_SEQUENCE], np.int64),
                    [_int64(windows[column]) for column, _, _, _ in layout.accumulators],
                )
            )
        return native


def _integer(dtype: pl.DataType | None) -> bool:
    return dtype is not None and dtype.is_integer() and dtype != pl.UInt64


def _int64(series: pl.Series) -> np.ndarray:
    """Integers as int64, a null as 0 (sums skip nulls)."""
    if series.null_count():
        series = series.fill_null(0)
    return numpy_column(series, np.int64)


def _series(name: str, columns: tuple[bytes, bytes, bytes], arrow_type: pa.DataType) -> pl.Series:
    offsets, data, valid = columns
    values = binary_array(arrow_type, pa.py_buffer(offsets), pa.py_buffer(data), valid)
    return pl.Series(name, values)
