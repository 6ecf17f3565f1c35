"""Kafka-compatible key partitioning, vectorised.

Kafka's default partitioner (the Java client's) sends a keyed message to partition
`(murmur2(key) & 0x7fffffff) % partitions`. Conflux computes the same over a whole column of
keys at once with numpy, so a file source and a Kafka topic agree on where every key lives.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.batch import value_buffers

_SEED = np.uint32(0x9747B28C)
_M = np.uint32(0x5BD1E995)


def murmur2(keys: pa.Array) -> np.ndarray:
    """Kafka's murmur2 of each binary key, as uint32 (Java's int reinterpreted).

    >>> murmur2(pa.array([b"21", b"abc"])).astype("int64").tolist()
    [3321034988, 479470107]
    """
    keys = keys.cast(pa.large_binary())
    offsets, data = value_buffers(keys)
    starts, lengths = offsets[:-1], (offsets[1:] - offsets[:-1]).astype(np.int64)
    with np.errstate(over="ignore"):
        h = _SEED ^ lengths.astype(np.uint32)
        blocks = lengths // 4
        for block in range(int(blocks.max(initial=0))):
            rows = blocks > block
            at = starts[rows] + 4 * block
            k = (
                data[at].astype(np.uint32)
                | (data[at + 1].astype(np.uint32) << 8)
                | (data[at + 2].astype(np.uint32) << 16)
                | (data[at + 3].astype(np.uint32) << 24)
            )
            k = k * _M
            k ^= k >> np.uint32(24)
            k = k * _M
            h[rows] = (h[rows] * _M) ^ k
        tail_at = starts + 4 * blocks
        tail = lengths % 4
        for index in (2, 1, 0):
            rows = tail > index
            h[rows] ^= data[tail_at[rows] + index].astype(np.uint32) << np.uint32(8 * index)
        rows = tail > 0
        h[rows] = h[rows] * _M
        h ^= h >> np.uint32(13)
        h = h * _M
        h ^= h >> np.uint32(15)
    return h


def partition_for(keys: pa.Array, partitions: int) -> np.ndarray:
    """The partition Kafka's default partitioner picks for each key (int32)."""
    return ((murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)
