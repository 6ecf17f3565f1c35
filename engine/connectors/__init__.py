"""Sources and sinks, and opening them from their specs."""

from __future__ import annotations

from engine.connectors.base import Sink, Source
from engine.connectors.files import NdjsonSink, NdjsonSource, ParquetSink, ParquetSource
from engine.connectors.memory import MemorySink, MemorySource
from engine.spec import FileSinkSpec, FileSourceSpec, MemorySourceSpec, SinkSpec, SourceSpec


def open_source(spec: SourceSpec) -> Source:
    if isinstance(spec, FileSourceSpec):
        kind = NdjsonSource if spec.format == "ndjson" else ParquetSource
        return kind(spec.path, spec.batch_size)
    assert isinstance(spec, MemorySourceSpec)
    return MemorySource(spec.values, batch_size=spec.batch_size)


def open_sink(spec: SinkSpec) -> Sink:
    if isinstance(spec, FileSinkSpec):
        return NdjsonSink(spec.path) if spec.format == "ndjson" else ParquetSink(spec.path)
    return MemorySink()


__all__ = [
    "MemorySink",
    "MemorySource",
    "NdjsonSink",
    "NdjsonSource",
    "ParquetSink",
    "ParquetSource",
    "Sink",
    "Source",
    "open_sink",
    "open_source",
]
