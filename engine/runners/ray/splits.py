"""Bounded sources cut into splits that workers read themselves.

A split is a picklable description of one batch (an NDJSON byte range, a Parquet row
group, a slice of in-memory values) with a `read()` that returns the batch its source would
have yielded. The driver only enumerates splits, so reading and decoding run in parallel in
the workers and raw bytes never travel through the object store.

Each split comes with the position after it, which a checkpoint keeps: a resumed run
enumerates again from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from engine.batch import raw_batch
from engine.connectors.files import ndjson_splits, parquet_splits
from engine.errors import CheckpointError
from engine.spec import FileSourceSpec, MemorySourceSpec, SourceSpec

#: Where a bounded source continues: {"byte", "line"} (NDJSON), {"row_group"} (Parquet),
#: {"offset"} (memory).
SplitPosition = dict[str, int]


class Split(Protocol):
    def read(self) -> pl.DataFrame: ...


@dataclass(frozen=True)
class MemorySplit:
    """A slice of a memory source's values; offsets count from the source's first value."""

    values: tuple[bytes, ...]
    first_offset: int

    def read(self) -> pl.DataFrame:
        offsets = list(range(self.first_offset, self.first_offset + len(self.values)))
        return raw_batch(list(self.values), offsets=offsets)


def splits_for(
    spec: SourceSpec, position: SplitPosition | None, workers: int = 1
) -> Iterator[tuple[Split, SplitPosition]]:
    """The splits of a bounded source from `position` (None: its start), each with the
    position after it.

    A split holds `batch_size` × `workers` records (Parquet: one row group), so that once
    the shuffle has cut it by owner each worker's stateful steps still see batches of
    about `batch_size`: their per-call costs are amortised as on the local runner (with
    10,000-row splits cut in two, dedup and windows cost 2.3–2.6x more per message).
    """
    size = spec.batch_size * workers
    if isinstance(spec, FileSourceSpec) and spec.format == "ndjson":
        byte, line = _field(position, "byte"), _field(position, "line")
        for split in ndjson_splits(spec.path, size, byte, line):
            yield split, {"byte": split.end, "line": split.first_line + size}
    elif isinstance(spec, FileSourceSpec):
        for split in parquet_splits(spec.path, _field(position, "row_group")):
            yield split, {"row_group": split.row_group + 1}
    elif isinstance(spec, MemorySourceSpec):
        values = [v.encode() if isinstance(v, str) else v for v in spec.values]
        for start in range(_field(position, "offset"), len(values), size):
            chunk = tuple(values[start : start + size])
            yield MemorySplit(chunk, start), {"offset": start + len(chunk)}
    else:
        raise TypeError(f"not a bounded source: {type(spec).__name__}")


def _field(position: SplitPosition | None, name: str) -> int:
    if position is None:
        return 0
    if name not in position:
        raise CheckpointError(
            f"a checkpoint's source position {position!r} has no {name!r}: was the source "
            "another kind? start again with an empty checkpoint directory"
        )
    return position[name]
