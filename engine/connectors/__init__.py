"""Sources and sinks, and opening them from their specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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


def open_source(spec: SourceSpec, *, checkpointed: bool = False) -> Source:
    """The source `spec` describes, as the local runner reads it.

    `checkpointed`: the run keeps a checkpoint (`PipelineSpec.checkpoint`). A Kafka source
    then reads every partition of its topic by manual assignment, without joining its
    consumer group, and still commits its offsets to the group after each checkpoint. The
    checkpoint, not the group, decides where a rerun starts, and it holds this process's
    state of every partition, so the group has nothing to share out (one process per
    group); a join would only cost time, about half the session timeout on Tansu. Without
    a checkpoint the source joins the group, whose rebalancing spreads the partitions over
    the processes in it.
    """
    if isinstance(spec, FileSourceSpec):
        kind = NdjsonSource if spec.format == "ndjson" else ParquetSource
        return kind(spec.path, spec.batch_size)
    if isinstance(spec, KafkaSourceSpec):
        return kafka_source(spec, partitions="all" if checkpointed else None)
    assert isinstance(spec, MemorySourceSpec)
    return MemorySource(spec.values, batch_size=spec.batch_size)


def kafka_source(
    spec: KafkaSourceSpec, partitions: Sequence[int] | Literal["all"] | None = None
) -> KafkaSource:
    """The source `spec` describes; with `partitions`, reading only those, or "all" of the
    topic's, by manual assignment (`KafkaSource`)."""
    return KafkaSource(
        spec.bootstrap,
        spec.topic,
        spec.group,
        batch_size=spec.batch_size,
        linger_ms=spec.linger_ms,
        prefetch=spec.prefetch,
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
