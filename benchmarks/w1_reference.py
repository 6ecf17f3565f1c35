"""Plain, single-threaded reference implementation of the W1 pipeline: the correctness oracle.

Every engine and runner must produce the outputs this module produces from the same input
(compared in canonical form, see `benchmarks.w1_canonical`). It is written to be checked by
reading, one record at a time over dicts with the standard library's `json`, each rule next
to the sentence of the W1 contract (WORKLOAD.md) it implements; speed is not a goal. State is kept
whole (nothing evicted), so memory grows with the number of distinct ids.

Run: ``python -m benchmarks.w1_reference IN.ndjson OUTDIR`` writes ``OUTDIR/<topic>.ndjson``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.w1_generate import REGIONS, SOURCES, TIERS, TYPES, kafka_partition

ROUTED_TOPICS = {"eu": "w1.out.eu", "us": "w1.out.us", "apac": "w1.out.apac"}
TOPICS = ("w1.out.eu", "w1.out.us", "w1.out.apac", "w1.agg", "w1.dlq", "w1.late")
DEDUP_HORIZON_MS = 10 * 60 * 1000
WINDOW_MS = 1000
ALLOWED_LATENESS_MS = 1000

# "exactly 9 digits": `\d` would also match non-ASCII digits such as "٣", so spell them out.
_ID_PATTERN = re.compile(r"evt-[0-9]{9}")
_KEY_PATTERN = re.compile(r"cust-[0-9]{5}")


class BadMessage(Exception):
    """A message that breaks a WORKLOAD.md input rule; `reason` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and ±Infinity; JSON (RFC 8259) does not.
    raise ValueError(f"{name} is not a JSON value")


# Built once: json.loads and json.dumps build a new decoder or encoder per call when given
# options, which would dominate the run time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _require(mapping: dict[str, Any], path: str) -> Any:
    """Return the field `path` names (its last part) from `mapping`, or raise "path: missing"."""
    field = path.rpartition(".")[2]
    if field not in mapping:
        raise BadMessage(f"{path}: missing")
    return mapping[field]


def _require_one_of(mapping: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    value = _require(mapping, path)
    # Checking the type first also keeps an unhashable value (a list) out of `in`.
    if not isinstance(value, str) or value not in allowed:
        raise BadMessage(f"{path}: expected one of {', '.join(allowed)}, got {_shown(value)}")


def parse_event(value: bytes) -> dict[str, Any]:
    """Decode and validate one raw value against the WORKLOAD.md input table.

    Returns the decoded event, every field kept. Raises `BadMessage` naming the first rule,
    in table order, that the value breaks.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadMessage(f"value is not valid UTF-8: {error}") from None
    try:
        event = _DECODER.decode(text)
    except ValueError as error:
        raise BadMessage(f"value is not valid JSON: {error}") from None
    # "A value that is not a JSON object is bad."
    if not isinstance(event, dict):
        raise BadMessage(f"value is not a JSON object, got {_type_name(event)}")
    try:
        # A "\ud800" escape parses to a lone surrogate, which is not Unicode text and cannot
        # be written out again as UTF-8; strict parsers (orjson, msgspec) reject it too.
        _ENCODER.encode(event).encode("utf-8")
    except UnicodeEncodeError:
        raise BadMessage("value is not valid JSON: a string holds a lone surrogate") from None

    # id: "string, `evt-` + exactly 9 digits".
    event_id = _require(event, "id")
    if not isinstance(event_id, str):
        raise BadMessage(f"id: expected a string, got {_type_name(event_id)}")
    if not _ID_PATTERN.fullmatch(event_id):
        raise BadMessage(f"id: expected 'evt-' + 9 digits, got {_shown(event_id)}")

    # ts: "a JSON integer ≥ 0 (not a float, not a boolean)". `type(...) is int` excludes
    # bool, which is a subclass of int.
    ts = _require(event, "ts")
    if type(ts) is not int:
        raise BadMessage(f"ts: expected an integer, got {_type_name(ts)}")
    if ts < 0:
        raise BadMessage(f"ts: expected ≥ 0, got {ts}")

    # source: "one of `crm`, `erp`, `web`"; type: "one of `contact.created`, ...".
    _require_one_of(event, "source", SOURCES)
    _require_one_of(event, "type", TYPES)

    # key: "string, `cust-` + exactly 5 digits".
    key = _require(event, "key")
    if not isinstance(key, str):
        raise BadMessage(f"key: expected a string, got {_type_name(key)}")
    if not _KEY_PATTERN.fullmatch(key):
        raise BadMessage(f"key: expected 'cust-' + 5 digits, got {_shown(key)}")

    # amount: "a JSON number (not a string, not a boolean), 0 ≤ amount ≤ 500, written with a
    # fraction": json.loads gives a float exactly for numbers written with a fraction or an
    # exponent, an int for "100". A literal too large for a double parses to inf, which the
    # range check rejects.
    amount = _require(event, "amount")
    if type(amount) is not float:
        raise BadMessage(f"amount: expected a number with a fraction, got {_type_name(amount)}")
    if not 0 <= amount <= 500:
        raise BadMessage(f"amount: expected 0 ≤ amount ≤ 500, got {amount!r}")

    # region: "one of `eu`, `us`, `apac`".
    _require_one_of(event, "region", REGIONS)

    # attrs: "an object with `email` (string, mixed case) and `tier` (one of `gold`, ...)".
    attrs = _require(event, "attrs")
    if not isinstance(attrs, dict):
        raise BadMessage(f"attrs: expected an object, got {_type_name(attrs)}")
    email = _require(attrs, "attrs.email")
    if not isinstance(email, str):
        raise BadMessage(f"attrs.email: expected a string, got {_type_name(email)}")
    _require_one_of(attrs, "attrs.tier", TIERS)
    return event


def transform(event: dict[str, Any]) -> dict[str, Any]:
    """Return the event with `attrs.email` lower-cased and `amount_cents` added.

    "`attrs.email` lower-cased; add `amount_cents` = round(amount × 100), an integer."
    Python's round() on the float product rounds half to even (0.125 × 100 → 12). Every
    other field, including unknown ones, is carried through in its place.
    """
    attrs = {**event["attrs"], "email": event["attrs"]["email"].lower()}
    return {**event, "attrs": attrs, "amount_cents": round(event["amount"] * 100)}


def _encode(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


class W1Reference:
    """The W1 pipeline, one message at a time; `outputs` maps each topic to its values.

    Dedup and aggregate state is kept per partition, as the contract says, in plain dicts.
    """

    def __init__(self) -> None:
        self.outputs: dict[str, list[bytes]] = {topic: [] for topic in TOPICS}
        self._dedup_emitted_ts: dict[int, dict[str, int]] = {}
        self._dedup_max_ts: dict[int, int] = {}
        self._aggregate_max_ts: dict[int, int] = {}
        self._open_windows: dict[int, dict[tuple[str, int], list[int]]] = {}

    def process(self, partition: int | None, value: bytes) -> None:
        """Run one message through every step; `partition=None` derives it from `key`."""
        # 1. validate: "A bad message goes to `w1.dlq`; nothing else is lost or stopped.
        #    Every occurrence of a bad message (redeliveries included) is dead-lettered."
        try:
            event = parse_event(value)
        except BadMessage as bad:
            raw = value.decode("utf-8", errors="replace")
            self.outputs["w1.dlq"].append(_encode({"reason": bad.reason, "raw": raw}))
            return
        # File form: "the engine derives each message's partition from its `key`".
        if partition is None:
            partition = kafka_partition(event["key"].encode("utf-8"))

        # 2. filter: "drop `type == "order.cancelled"`".
        if event["type"] == "order.cancelled":
            return

        # 3. transform.
        event = transform(event)

        # 4. dedup on `id`, per partition.
        if not self._dedup_keeps(partition, event):
            return

        # 5. route by `region` to `w1.out.eu`, `w1.out.us`, `w1.out.apac`.
        self.outputs[ROUTED_TOPICS[event["region"]]].append(_encode(event))

        # 6. aggregate.
        self._aggregate(partition, event)

    def _dedup_keeps(self, partition: int, event: dict[str, Any]) -> bool:
        """Step 4: whether the event survives dedup on its partition.

        "an event is dropped when an event with the same id was already emitted on its
        partition and that event's `ts` is ≥ (largest `ts` seen by dedup on that partition)
        − 10 minutes." The largest ts seen includes the event being decided.
        """
        max_ts = max(self._dedup_max_ts.get(partition, event["ts"]), event["ts"])
        self._dedup_max_ts[partition] = max_ts
        emitted_ts = self._dedup_emitted_ts.setdefault(partition, {})
        last_emitted = emitted_ts.get(event["id"])
        if last_emitted is not None and last_emitted >= max_ts - DEDUP_HORIZON_MS:
            return False
        emitted_ts[event["id"]] = event["ts"]
        return True

    def _aggregate(self, partition: int, event: dict[str, Any]) -> None:
        """Step 6: count and sum per `key` over tumbling 1 s windows, closed by watermark."""
        # "The watermark is per partition: the largest `ts` among events that reached this
        # step on that partition, minus 1 s of allowed lateness."
        max_ts = max(self._aggregate_max_ts.get(partition, event["ts"]), event["ts"])
        self._aggregate_max_ts[partition] = max_ts
        watermark = max_ts - ALLOWED_LATENESS_MS
        # "tumbling 1-second event-time windows [start, start + 1000), start = ts − ts mod 1000"
        start = event["ts"] - event["ts"] % WINDOW_MS
        windows = self._open_windows.setdefault(partition, {})
        if start + WINDOW_MS <= watermark:
            # "An event whose window is already closed when it arrives is late: it has been
            # routed (step 5) and also goes to `w1.late`; it is not counted in any window."
            self.outputs["w1.late"].append(_encode(event))
        else:
            totals = windows.setdefault((event["key"], start), [0, 0])
            totals[0] += 1
            totals[1] += event["amount_cents"]
        # "A window is closed, and emitted to `w1.agg`, as soon as start + 1000 ≤ watermark."
        # Windows the watermark has not passed stay open: W1 never flushes them at the end.
        for key, window_start in sorted(windows, key=lambda window: (window[1], window[0])):
            if window_start + WINDOW_MS > watermark:
                continue
            count, sum_cents = windows.pop((key, window_start))
            aggregate = {
                "key": key,
                "window_start": window_start,
                "window_end": window_start + WINDOW_MS,
                "count": count,
                "sum_cents": sum_cents,
            }
            self.outputs["w1.agg"].append(_encode(aggregate))


def run_reference(
    messages: Iterable[tuple[bytes | None, int | None, bytes]],
) -> dict[str, list[bytes]]:
    """Run the W1 pipeline over messages in arrival order; return topic → output values.

    Each message is (Kafka key, partition, raw value). The key only becomes the DLQ's Kafka
    key, which is not returned, so it is not read. A partition of None (the file form) is
    derived from the value's `key` field. Every one of the six topics is present.
    """
    reference = W1Reference()
    for _key, partition, value in messages:
        reference.process(partition, value)
    return reference.outputs


def read_ndjson(path: str | Path) -> Iterator[bytes]:
    """Yield each line of an NDJSON file as a raw value, without its "\\n" and a "\\r" before.

    A blank line is yielded too: in the file form it is a message (a bad one).
    """
    with open(path, "rb") as lines:
        for line in lines:
            yield line.removesuffix(b"\n").removesuffix(b"\r")


def run_reference_file(path: str | Path) -> dict[str, list[bytes]]:
    """Run the W1 pipeline over the file form of the input (one raw value per line)."""
    return run_reference((None, None, value) for value in read_ndjson(path))


def write_output_dir(outputs: dict[str, list[bytes]], path: str | Path) -> None:
    """Write each topic's values to ``path/<topic>.ndjson``, one per line, empty ones too."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for topic in TOPICS:
        with open(directory / f"{topic}.ndjson", "wb") as out:
            for value in outputs[topic]:
                out.write(value + b"\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: write the reference outputs of a W1 input file."""
    parser = argparse.ArgumentParser(description="Compute the W1 reference outputs.")
    parser.add_argument("input", type=Path, help="NDJSON input, one raw value per line")
    parser.add_argument("output_dir", type=Path, help="directory for <topic>.ndjson files")
    args = parser.parse_args(argv)
    write_output_dir(run_reference_file(args.input), args.output_dir)


if __name__ == "__main__":
    main()
