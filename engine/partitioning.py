"""Kafka-compatible key partitioning, vectorised.

Kafka's default partitioner (the Java client's) sends a keyed message to partition
`(murmur2(key) & 0x7fffffff) % partitions`. Conflux computes the same over a whole column of
keys at once, so a file source and a Kafka topic agree on where every key lives.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine import _native
from engine.batch import Columns, value_buffers


def murmur2(keys: pa.Array) -> np.ndarray:
    """Kafka's murmur2 of each binary key, as uint32 (Java's int reinterpreted), computed
    natively in one pass (`engine/native/murmur2.c`).

    >>> murmur2(pa.array([b"21", b"abc"])).astype("int64").tolist()
    [3321034988, 479470107]
    """
    offsets, data = value_buffers(keys.cast(pa.large_binary()))
    return np.frombuffer(_native.murmur2(offsets, data), np.uint32)


def partition_for(keys: Columns, partitions: int) -> np.ndarray:
    """The partition Kafka's default partitioner picks for each key of a column as
    `engine.batch.binary_columns` gives it (int32); a null key's entry is that of an empty
    key, for the caller to replace (callers place null keys differently)."""
    offsets, data, _ = keys
    hashes = np.frombuffer(_native.murmur2(offsets, data), np.uint32)
    return ((hashes & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)
