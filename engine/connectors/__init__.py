"""Sources and sinks, and opening them from their specs."""

from __future__ import annotations

from collections.abc import Sequence

from engine.connectors.base import Sink, Source
from engine.connectors.files import NdjsonSink, NdjsonSource, ParquetSink, ParquetSource
from engine.connectors.kafka import KafkaSink, KafkaSource
from engine.connectors.memory import MemorySink, MemorySource
from engine.spec import (
    FileSinkSpec,
    FileSourceSpec,
    KafkaSinkSpec,
    KafkaSourceSpec,
    MemorySourceSpec,
    SinkSpec,
    SourceSpec,
)


def open_source(spec: SourceSpec) -> Source:
    if isinstance(spec, FileSourceSpec):
        kind = NdjsonSource if spec.format == "ndjson" else ParquetSource
        return kind(spec.path, spec.batch_size)
    if isinstance(spec, KafkaSourceSpec):
        return kafka_source(spec)
    assert isinstance(spec, MemorySourceSpec)
    return MemorySource(spec.values, batch_size=spec.batch_size)


def kafka_source(spec: KafkaSourceSpec, partitions: Sequence[int] | None = None) -> KafkaSource:
    """The source `spec` describes; with `partitions`, reading only those (manual
    assignment: the Ray runner's workers)."""
    return KafkaSource(
        spec.bootstrap,
        spec.topic,
        spec.group,
        batch_size=spec.batch_size,
        linger_ms=spec.linger_ms,
        start=spec.start,
        stop_when_idle_ms=spec.stop_when_idle_ms,
        session_timeout_ms=spec.session_timeout_ms,
        partitions=partitions,
    )


def open_sink(spec: SinkSpec) -> Sink:
    if isinstance(spec, FileSinkSpec):
        return NdjsonSink(spec.path) if spec.format == "ndjson" else ParquetSink(spec.path)
    if isinstance(spec, KafkaSinkSpec):
        return KafkaSink(
            spec.bootstrap,
            spec.topic,
            partitions=spec.partitions,
            compression=spec.compression,
            acks=spec.acks,
            source_topic=spec.source_topic,
        )
    return MemorySink()


__all__ = [
    "KafkaSink",
    "KafkaSource",
    "MemorySink",
    "MemorySource",
    "NdjsonSink",
    "NdjsonSource",
    "ParquetSink",
    "ParquetSource",
    "Sink",
    "Source",
    "kafka_source",
    "open_sink",
    "open_source",
]
