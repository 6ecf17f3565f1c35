"""In-memory source and sink: tests, examples and embedding Conflux in a program."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import orjson
import polars as pl

from engine.batch import raw_batch
from engine.connectors.encoding import encode_values


class MemorySource:
    """Yields the given values (bytes or text) in batches of `batch_size`."""

    def __init__(
        self,
        values: Sequence[bytes | str],
        *,
        keys: Sequence[bytes | None] | None = None,
        partitions: Sequence[int] | None = None,
        batch_size: int = 10_000,
    ) -> None:
        self.values = [v.encode() if isinstance(v, str) else v for v in values]
        self.keys = list(keys) if keys is not None else None
        self.partitions = list(partitions) if partitions is not None else None
        self.batch_size = batch_size

    async def batches(self) -> AsyncIterator[pl.DataFrame]:
        for start in range(0, len(self.values), self.batch_size):
            end = start + self.batch_size
            yield raw_batch(
                self.values[start:end],
                keys=self.keys[start:end] if self.keys is not None else None,
                partitions=self.partitions[start:end] if self.partitions is not None else None,
                offsets=list(range(start, min(end, len(self.values)))),
            )


class MemorySink:
    """Keeps every batch it receives; `values()` and `records()` read them back."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    async def write(self, frame: pl.DataFrame) -> None:
        if frame.height:
            self.frames.append(frame)

    async def close(self) -> None:
        return None

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.frames, how="diagonal_relaxed") if self.frames else pl.DataFrame()

    def values(self) -> list[bytes]:
        """The values a message-based sink would write, in order."""
        return [v.encode() for frame in self.frames for v in encode_values(frame).to_list()]

    def records(self) -> list[dict]:
        return [orjson.loads(value) for value in self.values()]
