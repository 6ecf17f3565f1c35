"""Sources and sinks: files, memory and the streaming source's size and time bounds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import polars as pl
import pytest

from engine import Pipeline
from engine.batch import HEADERS, raw_batch
from engine.connectors import MemorySink, NdjsonSource, ParquetSink, ParquetSource, files
from engine.connectors.batching import StreamSource
from engine.schema_examples import Order
from engine.spec import FileSinkSpec, FileSourceSpec


def _lines(source: NdjsonSource) -> list[bytes]:
    async def read() -> list[bytes]:
        return [v for frame in [b async for b in source.batches()] for v in frame["_raw"]]

    return asyncio.run(read())


def test_ndjson_source_splits_lines_exactly(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"a": 1}\r\n\n{"b": 2}\nlast-without-newline')
    assert _lines(NdjsonSource(path, batch_size=2)) == [
        b'{"a": 1}',
        b"",
        b'{"b": 2}',
        b"last-without-newline",
    ]


def test_ndjson_source_reads_lines_across_blocks_and_longer_than_a_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_BLOCK_BYTES", 16)  # each read ends inside a line
    lines = [b"x" * n for n in (0, 5, 15, 16, 17, 40, 3)] + [b"end\r"]
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\r\n")
    assert _lines(NdjsonSource(path, batch_size=3)) == lines


def test_ndjson_source_batches_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(25)))

    async def read() -> list[pl.DataFrame]:
        return [b async for b in NdjsonSource(path, batch_size=10).batches()]

    frames = asyncio.run(read())
    assert [f.height for f in frames] == [10, 10, 5]
    assert pl.concat(frames)["_offset"].to_list() == list(range(25))
    assert frames[2]["_raw"].to_list() == [b"%d" % n for n in range(20, 25)]


def test_missing_input_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"NDJSON source: no such file: .*nope\.ndjson"):
        _lines(NdjsonSource(tmp_path / "nope.ndjson"))


def test_parquet_round_trip_through_a_pipeline(tmp_path: Path) -> None:
    source = tmp_path / "orders.ndjson"
    source.write_bytes(
        b'{"id": "o-1", "amount": 2.5, "status": "new"}\n'
        b'{"id": "o-2", "amount": 3.5, "status": "paid"}\n'
    )
    parquet = tmp_path / "orders.parquet"
    (
        Pipeline("to-parquet")
        .source(FileSourceSpec(path=str(source)))
        .decode(Order)
        .output("out", FileSinkSpec(path=str(parquet), format="parquet"))
        .dead_letter("bad", FileSinkSpec(path=str(tmp_path / "bad.ndjson")))
        .run()
    )
    assert pl.read_parquet(parquet).to_dicts() == [
        {"id": "o-1", "amount": 2.5, "status": "new"},
        {"id": "o-2", "amount": 3.5, "status": "paid"},
    ]
    out = MemorySink()
    (
        Pipeline("from-parquet")
        .source(ParquetSource(parquet, batch_size=1))
        .filter("status = 'paid'")
        .output("out", out)
        .dead_letter("bad", MemorySink())
        .run()
    )
    assert out.records() == [{"id": "o-2", "amount": 3.5, "status": "paid"}]


def test_parquet_sink_writes_dead_letters_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "dlq.parquet"
    sink = ParquetSink(path)
    frame = raw_batch([b"oops"]).with_columns(
        pl.lit("decode: value is not valid JSON").alias("_reason"), pl.lit("decode").alias("_stage")
    )

    async def write() -> None:
        await sink.write(frame)
        await sink.close()

    asyncio.run(write())
    assert pl.read_parquet(path).to_dicts() == [
        {"_reason": "decode: value is not valid JSON", "_stage": "decode", "_raw": b"oops"}
    ]


def test_headers_travel_with_the_record() -> None:
    batch = raw_batch([b'{"text": "hi"}'], headers=[[("trace", b"abc")]])
    from engine.operators.decode import Decode

    out = Decode(schema="engine.schema_examples:Greeting").process(batch, None)["main"]
    assert out[HEADERS].to_list() == [[{"key": "trace", "value": b"abc"}]]


def test_stream_source_flushes_on_size_and_on_time() -> None:
    async def scenario() -> list[tuple[float, int]]:
        source = StreamSource(max_records=3, max_wait_ms=100)
        flushed: list[tuple[float, int]] = []
        started = time.monotonic()

        async def consume() -> None:
            async for batch in source.batches():
                flushed.append((time.monotonic() - started, batch.height))

        consumer = asyncio.create_task(consume())
        for _ in range(4):
            await source.put(b"{}")
        await asyncio.sleep(0.3)
        await source.close()
        await consumer
        return flushed

    flushed = asyncio.run(scenario())
    assert [height for _, height in flushed] == [3, 1]
    assert flushed[0][0] < 0.05, "a full batch goes at once"
    assert 0.09 <= flushed[1][0] < 0.25, "a lone record waits max_wait_ms, not for a full batch"


def test_stream_source_runs_a_pipeline_end_to_end() -> None:
    source, out = StreamSource(max_records=100, max_wait_ms=10), MemorySink()

    async def feed() -> None:
        for n in range(5):
            await source.put(orjson.dumps({"text": f"m{n}"}))
        await source.close()

    async def run() -> None:
        from engine.runners.local import LocalRunner

        pipeline = (
            Pipeline("stream")
            .source(source)
            .decode("engine.schema_examples:Greeting")
            .output("out", out)
            .dead_letter("bad", MemorySink())
        )
        runner = LocalRunner(pipeline.plan(), source, {"out": out, "bad": MemorySink()})
        await asyncio.gather(feed(), runner.run_async())

    asyncio.run(run())
    assert [r["text"] for r in out.records()] == [f"m{n}" for n in range(5)]
