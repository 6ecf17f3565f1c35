"""W1, the reference workload (../shared/WORKLOAD.md), built with the Python API.

The same pipeline as `w1_files.yaml`; `tests/integration` holds them to equal outputs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from engine import Pipeline
from engine.connectors import Sink, Source
from engine.spec import FileSinkSpec, SinkSpec, SourceSpec

TOPICS = ("w1.out.eu", "w1.out.us", "w1.out.apac", "w1.agg", "w1.dlq", "w1.late")


class Attrs(msgspec.Struct):
    email: str
    tier: Literal["gold", "silver", "bronze"]


class Event(msgspec.Struct):
    """A W1 input message; every rule of WORKLOAD.md's input table is declared here."""

    id: Annotated[str, msgspec.Meta(pattern=r"^evt-[0-9]{9}$")]
    ts: Annotated[int, msgspec.Meta(ge=0)]
    source: Literal["crm", "erp", "web"]
    type: Literal["contact.created", "contact.updated", "order.placed", "order.cancelled"]
    key: Annotated[str, msgspec.Meta(pattern=r"^cust-[0-9]{5}$")]
    amount: Annotated[float, msgspec.Meta(ge=0, le=500)]
    region: Literal["eu", "us", "apac"]
    attrs: Attrs


def w1(
    source: SourceSpec | Source, sinks: dict[str, SinkSpec | Sink], *, partition_by_key: bool
) -> Pipeline:
    """W1 from `source` into the six `sinks` (topic name → sink).

    `partition_by_key` derives each message's partition from its `key` as Kafka's default
    partitioner does: the file form needs it, a Kafka topic already has it.
    """
    pipeline = Pipeline("w1").source(source).decode(Event, name="validate")
    if partition_by_key:
        pipeline.key_by(field="key", partitions=4)
    return (
        pipeline.filter("type != 'order.cancelled'")
        .transform(
            set={
                "attrs.email": "lower(attrs.email)",
                "amount_cents": "CAST(ROUND(amount * 100) AS BIGINT)",
            }
        )
        .dedup(on=("id",), event_time="ts", horizon_ms=600_000)
        .route(by="region", routes={"eu": "w1.out.eu", "us": "w1.out.us", "apac": "w1.out.apac"})
        .sink("w1.out.eu", sinks["w1.out.eu"])
        .sink("w1.out.us", sinks["w1.out.us"])
        .sink("w1.out.apac", sinks["w1.out.apac"])
        .tumbling_window(
            key_by=("key",),
            event_time="ts",
            size_ms=1000,
            allowed_lateness_ms=1000,
            aggregates={"count": "count()", "sum_cents": "sum(amount_cents)"},
            late="w1.late",
        )
        .sink("w1.late", sinks["w1.late"])
        .output("w1.agg", sinks["w1.agg"])
        .dead_letter("w1.dlq", sinks["w1.dlq"])
    )


def file_sinks(directory: str) -> dict[str, SinkSpec | Sink]:
    """One NDJSON file per topic, `<topic>.ndjson`, in `directory`."""
    return {topic: FileSinkSpec(path=f"{directory}/{topic}.ndjson") for topic in TOPICS}
