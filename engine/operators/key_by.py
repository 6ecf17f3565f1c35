"""Key by: give each row a message key and the partition Kafka would give that key."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import polars as pl

from engine.batch import KEY, PARTITION, binary_columns
from engine.operators.base import MAIN, Outputs, Step, column, require_fields
from engine.partitioning import partition_for


class KeyBy(Step, tag="key_by"):
    """Set `_key` to `field`'s value and `_partition` as Kafka's default partitioner would.

    So a file source and a Kafka topic agree on which partition holds each key: per-key
    state (dedup, windows) then sees the same partitions whatever the source. A row with a
    null field keeps a null key and goes to partition 0. Stateless; order is kept.

    Args:
        field: the field whose UTF-8 text is the key (dotted for nested fields).
        partitions: how many partitions the keyspace is spread over.

    >>> import polars as pl
    >>> out = KeyBy(field="k", partitions=4).process(pl.DataFrame({"k": ["21"]}), None)
    >>> out["main"]["_partition"].to_list()  # Kafka: murmur2("21") & 0x7fffffff % 4
    [0]
    """

    field: str
    partitions: Annotated[int, msgspec.Meta(gt=0)]

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (self.field,), fields)

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        keys = batch.select(column(self.field).cast(pl.String).cast(pl.Binary)).to_series()
        columns = binary_columns(keys)
        partition = partition_for(columns, self.partitions)
        _, _, valid = columns
        if valid is not None:  # a null key goes to partition 0, as documented
            partition[valid == 0] = 0
        return {
            MAIN: batch.with_columns(
                keys.alias(KEY),
                pl.Series(PARTITION, partition, pl.Int32).alias(PARTITION),
            )
        }
