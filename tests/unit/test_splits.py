"""Splits of bounded sources (the Ray runner's unit of work) and frames between actors:
together the splits read exactly what the source yields, a position resumes where it says,
and a packed frame comes back unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from engine.batch import HEADER_DTYPE, raw_batch
from engine.connectors import NdjsonSource
from engine.errors import CheckpointError
from engine.runners.ray.splits import splits_for
from engine.runners.ray.transfer import pack, unpack
from engine.spec import FileSourceSpec, MemorySourceSpec


def _source_lines(path: Path) -> pl.DataFrame:
    async def read() -> list[pl.DataFrame]:
        return [batch async for batch in NdjsonSource(path, batch_size=7).batches()]

    return pl.concat(asyncio.run(read())).select("_raw", "_offset")


@pytest.fixture
def ndjson(tmp_path: Path) -> Path:
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"".join(b'{"n": %d}\n' % n for n in range(95)) + b"last-unended")
    return path


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ndjson_splits_hold_batch_size_times_workers_lines_and_read_the_whole_file(
    ndjson: Path, workers: int
) -> None:
    spec = FileSourceSpec(path=str(ndjson), batch_size=10)
    batches = [split.read() for split, _ in splits_for(spec, None, workers)]
    assert [batch.height for batch in batches[:-1]] == [10 * workers] * (len(batches) - 1)
    read = pl.concat(batches).select("_raw", "_offset")
    assert read.equals(_source_lines(ndjson))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_split_position_resumes_with_the_splits_that_followed_it(
    ndjson: Path, workers: int
) -> None:
    spec = FileSourceSpec(path=str(ndjson), batch_size=10)
    whole = [split.read() for split, _ in splits_for(spec, None, workers)]
    _, position = list(splits_for(spec, None, workers))[1]
    resumed = [split.read() for split, _ in splits_for(spec, position, workers)]
    assert len(resumed) == len(whole) - 2
    for expected, actual in zip(whole[2:], resumed, strict=True):
        assert actual.equals(expected)


def test_memory_splits_carry_their_offsets() -> None:
    spec = MemorySourceSpec(values=[f'{{"n": {n}}}' for n in range(25)], batch_size=5)
    splits = list(splits_for(spec, None, workers=2))
    assert [position for _, position in splits] == [{"offset": 10}, {"offset": 20}, {"offset": 25}]
    offsets = pl.concat([split.read() for split, _ in splits])["_offset"].to_list()
    assert offsets == list(range(25))


def test_a_position_of_another_kind_of_source_is_refused(ndjson: Path) -> None:
    spec = FileSourceSpec(path=str(ndjson), batch_size=10)
    with pytest.raises(CheckpointError, match="has no 'byte'"):
        next(iter(splits_for(spec, {"offset": 3})))


def test_a_packed_frame_comes_back_unchanged() -> None:
    frame = raw_batch([b'{"a": 1}', b"\xff not utf-8"], offsets=[4, 5]).with_columns(
        pl.Series("nested", [{"x": 1, "tags": ["a"]}, {"x": None, "tags": []}]),
        pl.Series("_headers", [[{"key": "k", "value": b"v"}], None], HEADER_DTYPE),
        pl.Series("text", ["é", None], pl.String),
    )
    assert unpack(pack(frame)).equals(frame)
    assert unpack(pack(frame.clear())).schema == frame.schema
