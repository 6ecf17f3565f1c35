"""Kafka-compatible key partitioning, vectorised.

Kafka's default partitioner (the Java client's) sends a keyed message to partition
`(murmur2(key) & 0x7fffffff) % partitions`. Conflux computes the same over a whole column of
keys at once, so a file source and a Kafka topic agree on where every key lives.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine import _native
from engine.batch import value_buffers


def murmur2(keys: pa.Array) -> np.ndarray:
    """Kafka's murmur2 of each binary key, as uint32 (Java's int reinterpreted), computed
    natively in one pass (`engine/native/murmur2.c`).

    >>> murmur2(pa.array([b"21", b"abc"])).astype("int64").tolist()
    [3321034988, 479470107]
    """
    offsets, data = value_buffers(keys.cast(pa.large_binary()))
    return np.frombuffer(_native.murmur2(offsets, data), np.uint32)


def partition_for(keys: pa.Array, partitions: int) -> np.ndarray:
    """The partition Kafka's default partitioner picks for each key (int32)."""
    return ((murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)
