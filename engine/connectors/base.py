"""What a runner needs of a source and a sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import polars as pl


class Source(Protocol):
    """Yields batches: undecoded (`_raw` + envelope) or already columnar (Parquet)."""

    def batches(self) -> AsyncIterator[pl.DataFrame]: ...


class Sink(Protocol):
    """Receives the batches a pipeline sends it; `close` flushes and releases it."""

    async def write(self, frame: pl.DataFrame) -> None: ...

    async def close(self) -> None: ...
