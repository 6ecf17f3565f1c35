"""Deterministic generator of the W1 input, as WORKLOAD.md ("Input") defines it.

The same `count`, `seed` and `ts_step_ms` always give the same messages, byte for byte, and a
shorter run is a prefix of a longer one (random numbers are drawn in fixed-size chunks), so a
figure quoted on "1,000,000 messages, seed 42" can be reproduced anywhere.

Run: ``python -m benchmarks.w1_generate --count N [--seed S] [--ts-step-ms X] --out FILE``
writes the file form of the input: one raw value per line, in write order.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from aiokafka.partitioner import murmur2

PARTITIONS = 4
START_TS_MS = 1_767_225_600_000
CUSTOMERS = 100_000
ZIPF_EXPONENT = 1.1
MAX_JITTER_MS = 500
MAX_AMOUNT_CENTS = 50_000
REDELIVERY_RATE = 0.05
BAD_RATE = 0.01
REDELIVERY_WINDOW = 10_000
MAX_EVENT_NUMBER = 999_999_999

SOURCES = ("crm", "erp", "web")
TYPES = ("contact.created", "contact.updated", "order.placed", "order.cancelled")
REGIONS = ("eu", "us", "apac")
TIERS = ("gold", "silver", "bronze")

# Every chunk draws this many values of each random column, whatever `count` is: that keeps
# the random stream, and so every message, independent of how many messages are asked for.
_CHUNK = 65_536


class W1Message(NamedTuple):
    """One input message as a producer writes it: Kafka key, partition and raw value."""

    key: bytes
    partition: int
    value: bytes


def kafka_partition(key: bytes, partitions: int = PARTITIONS) -> int:
    """Return the partition Kafka's default (Java) partitioner picks for a non-null key.

    aiokafka's murmur2 returns the unsigned 32-bit form of Java's signed result; masking with
    0x7fffffff gives the same non-negative value Java's ``toPositive`` does.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def zipf_cdf(customers: int = CUSTOMERS, exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    """Return the cumulative distribution of a Zipf law bounded to ranks 1..customers."""
    weights = np.arange(1, customers + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def event_json(
    *,
    number: int | None,
    ts: int,
    source: str,
    type_: str,
    customer: int,
    amount: str,
    region: str,
    tier: str,
) -> bytes:
    """Serialise one event with ``json.dumps``' default spacing; `number=None` omits `id`.

    `amount` is the literal JSON text, so a bad message can write it as a string. Every
    string here is plain ASCII without quotes or backslashes, so no escaping is needed.
    """
    id_field = "" if number is None else f'"id": "evt-{number:09d}", '
    return (
        f'{{{id_field}"ts": {ts}, "source": "{source}", "type": "{type_}", '
        f'"key": "cust-{customer:05d}", "amount": {amount}, "region": "{region}", '
        f'"attrs": {{"email": "User{customer}@Example.io", "tier": "{tier}"}}}}'
    ).encode()


def generate(count: int, seed: int = 42, ts_step_ms: float = 100.0) -> Iterator[W1Message]:
    """Yield `count` W1 input messages in write order.

    Args:
        count: messages to yield, redeliveries and bad ones included (0 to 10**9).
        seed: seed of numpy's default bit generator; the only source of randomness.
        ts_step_ms: mean of the exponential step the global event clock takes per message.

    Faults are drawn per message: 5 % are exact copies of one of the last 10,000 messages
    written, 1 % are new bad messages (half cut short, a quarter without `id`, a quarter with
    `amount` as a string). Each new message takes the next event number and a `ts` of the
    global clock plus up to 500 ms of jitter, raised to its partition's last `ts` so each
    partition stays in event-time order.
    """
    if not 0 <= count <= MAX_EVENT_NUMBER + 1:
        raise ValueError(f"count: expected 0 to {MAX_EVENT_NUMBER + 1}, got {count}")
    if ts_step_ms < 0:
        raise ValueError(f"ts_step_ms: expected ≥ 0, got {ts_step_ms}")
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf()
    partition_of: dict[int, int] = {}
    last_ts = [0] * PARTITIONS
    history: list[W1Message] = []
    clock = float(START_TS_MS)
    written = 0
    while written < count:
        kind = rng.random(_CHUNK).tolist()
        pick = rng.random(_CHUNK).tolist()
        step = rng.exponential(ts_step_ms, _CHUNK).tolist()
        jitter = rng.integers(0, MAX_JITTER_MS + 1, _CHUNK).tolist()
        # side="right" maps u in [cdf[r-1], cdf[r]) to index r: rank r + 1 with its probability.
        customer = np.searchsorted(cdf, rng.random(_CHUNK), side="right").tolist()
        source = rng.integers(0, len(SOURCES), _CHUNK).tolist()
        type_ = rng.integers(0, len(TYPES), _CHUNK).tolist()
        region = rng.integers(0, len(REGIONS), _CHUNK).tolist()
        tier = rng.integers(0, len(TIERS), _CHUNK).tolist()
        cents = rng.integers(0, MAX_AMOUNT_CENTS + 1, _CHUNK).tolist()
        bad_kind = rng.random(_CHUNK).tolist()
        cut = rng.random(_CHUNK).tolist()
        for i in range(min(_CHUNK, count - written)):
            if kind[i] < REDELIVERY_RATE and written > 0:
                # The ring buffer's filled slots are exactly the last min(written, window)
                # messages, so a uniform slot is a uniform pick among them.
                message = history[int(pick[i] * min(written, REDELIVERY_WINDOW))]
            else:
                key = f"cust-{customer[i]:05d}".encode()
                partition = partition_of.get(customer[i])
                if partition is None:
                    partition = partition_of[customer[i]] = kafka_partition(key)
                ts = max(last_ts[partition], int(clock) + jitter[i])
                last_ts[partition] = ts
                bad = REDELIVERY_RATE <= kind[i] < REDELIVERY_RATE + BAD_RATE
                amount = f"{cents[i] // 100}.{cents[i] % 100:02d}"
                if bad and bad_kind[i] >= 0.75:
                    amount = f'"{amount}"'
                value = event_json(
                    number=None if bad and 0.5 <= bad_kind[i] < 0.75 else written,
                    ts=ts,
                    source=SOURCES[source[i]],
                    type_=TYPES[type_[i]],
                    customer=customer[i],
                    amount=amount,
                    region=REGIONS[region[i]],
                    tier=TIERS[tier[i]],
                )
                if bad and bad_kind[i] < 0.5:
                    # Any proper, non-empty prefix of a JSON object is invalid JSON.
                    value = value[: 1 + int(cut[i] * (len(value) - 1))]
                message = W1Message(key, partition, value)
            if written < REDELIVERY_WINDOW:
                history.append(message)
            else:
                history[written % REDELIVERY_WINDOW] = message
            yield message
            clock += step[i]
            written += 1


def write_ndjson(messages: Iterable[W1Message], path: str | Path) -> int:
    """Write each message's value as one line of `path` (the file form); return the count."""
    written = 0
    with open(path, "wb") as out:
        for message in messages:
            out.write(message.value + b"\n")
            written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: generate a W1 input file."""
    parser = argparse.ArgumentParser(description="Write a deterministic W1 input as NDJSON.")
    parser.add_argument("--count", type=int, required=True, help="messages to write")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ts-step-ms", type=float, default=100.0, help="mean event-time step")
    parser.add_argument("--out", type=Path, required=True, help="NDJSON file to write")
    args = parser.parse_args(argv)
    write_ndjson(generate(args.count, args.seed, args.ts_step_ms), args.out)


if __name__ == "__main__":
    main()
