"""Kafka-compatible key partitioning, vectorised.

Kafka's default partitioner (the Java client's) sends a keyed message to partition
`(murmur2(key) & 0x7fffffff) % partitions`. Conflux computes the same over a whole column of
keys at once, so a file source and a Kafka topic agree on where every key lives.
"""

from __future__ import annotations

import numpy as np

from engine import _native
from engine.batch import Columns


def murmur2(keys: Columns) -> np.ndarray:
    """Kafka's murmur2 of each key of a column as `engine.batch.binary_columns` gives it, as
    uint32 (Java's int reinterpreted), computed natively in one pass
    (`engine/native/murmur2.c`); a null key's entry is that of an empty key.

    >>> import polars as pl
    >>> from engine.batch import binary_columns
    >>> keys = binary_columns(pl.Series([b"21", b"abc"]))
    >>> murmur2(keys).astype("int64").tolist()
    [3321034988, 479470107]
    """
    offsets, data, _ = keys
    return np.frombuffer(_native.murmur2(offsets, data), np.uint32)


def partition_for(keys: Columns, partitions: int) -> np.ndarray:
    """The partition Kafka's default partitioner picks for each key of a column (int32); a
    null key's entry is that of an empty key, for the caller to replace (callers place null
    keys differently)."""
    return ((murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)
