"""Canonical form of W1 outputs and the comparison of two runs (WORKLOAD.md "Canonical form").

"A topic's outputs are a multiset of canonical lines: order does not matter, counts do." Two
runs are equal when every topic's multiset is; a DLQ entry is compared by its `raw` text only,
because engines may word their reasons differently.

Run: ``python -m benchmarks.w1_canonical EXPECTED_DIR ACTUAL_DIR`` prints the differences
between two output directories of ``<topic>.ndjson`` files and exits 1 if there are any.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.w1_reference import ROUTED_TOPICS, TOPICS, read_ndjson

EXAMPLES_SHOWN = 5


def _decoded(value: bytes) -> Any:
    return json.loads(value.decode("utf-8"))


def _canonical_line(topic: str, value: bytes) -> str:
    try:
        if topic == "w1.agg":
            aggregate = _decoded(value)
            return (
                f"{aggregate['key']}|{aggregate['window_start']}"
                f"|{aggregate['count']}|{aggregate['sum_cents']}"
            )
        if topic == "w1.dlq":
            return _decoded(value)["raw"]
        return json.dumps(
            _decoded(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, KeyError, TypeError):
        # An engine's malformed output must show up as a difference, not stop the comparison.
        return f"<unreadable {topic} value {value!r}>"


def canonical_lines(topic: str, values: Iterable[bytes]) -> Counter[str]:
    """Return the multiset of canonical lines of one topic's output values.

    Routed and late events become JSON with sorted keys, aggregates
    ``key|window_start|count|sum_cents``, DLQ entries their `raw` text. A value that cannot
    be read becomes a line starting with ``<unreadable``, so it never equals a good one.
    Raises ValueError for a topic that is not one of W1's six.
    """
    if topic not in TOPICS:
        raise ValueError(f"topic: expected one of {', '.join(TOPICS)}, got {topic!r}")
    return Counter(_canonical_line(topic, value) for value in values)


def _multiset_differences(topic: str, expected: Counter[str], actual: Counter[str]) -> list[str]:
    differences = []
    expected_total, actual_total = expected.total(), actual.total()
    if expected_total != actual_total:
        differences.append(f"{topic}: {actual_total} values, expected {expected_total}")
    for label, surplus in (("missing", expected - actual), ("extra", actual - expected)):
        if not surplus:
            continue
        differences.append(f"{topic}: {surplus.total()} lines {label}, for example:")
        for line, times in sorted(surplus.items())[:EXAMPLES_SHOWN]:
            differences.append(f"{topic}:   {label}{f' ×{times}' if times > 1 else ''}: {line}")
    return differences


def _routed_ids(outputs: dict[str, list[bytes]]) -> Counter[str]:
    ids: Counter[str] = Counter()
    for topic in ROUTED_TOPICS.values():
        for value in outputs.get(topic, []):
            try:
                ids[_decoded(value)["id"]] += 1
            except (ValueError, KeyError, TypeError):
                continue  # already reported as an unreadable line
    return ids


def _duplicate_differences(
    expected: dict[str, list[bytes]], actual: dict[str, list[bytes]]
) -> list[str]:
    """Report routed ids and aggregate windows that `actual` emits more than once.

    A routed id is a duplicate only beyond what `expected` holds: W1's dedup re-emits an id
    whose earlier copy fell out of its 10-minute horizon, so the reference itself may route
    an id twice. No window is ever emitted twice by the reference: once its watermark has
    passed, every event for it is late.
    """
    differences = []
    expected_ids = _routed_ids(expected)
    for event_id, times in sorted(_routed_ids(actual).items()):
        if times > max(1, expected_ids[event_id]):
            differences.append(
                f"w1.out.*: id {event_id} routed {times} times, expected {expected_ids[event_id]}"
            )
    windows: Counter[tuple[str, int]] = Counter()
    for value in actual.get("w1.agg", []):
        try:
            aggregate = _decoded(value)
            windows[(aggregate["key"], aggregate["window_start"])] += 1
        except (ValueError, KeyError, TypeError):
            continue  # already reported as an unreadable line
    for (key, window_start), times in sorted(windows.items()):
        if times > 1:
            differences.append(f"w1.agg: window ({key}, {window_start}) emitted {times} times")
    return differences


def compare(expected: dict[str, list[bytes]], actual: dict[str, list[bytes]]) -> list[str]:
    """Return human-readable differences between two runs' outputs; empty means equal.

    Per topic: a count mismatch, then up to five example lines missing and extra. Then the
    duplicate checks: a routed id (across the three `w1.out.*` topics) or an aggregate
    window emitted more often than the contract allows. A topic absent from a dict is empty.
    """
    differences = []
    for topic in TOPICS:
        differences += _multiset_differences(
            topic,
            canonical_lines(topic, expected.get(topic, [])),
            canonical_lines(topic, actual.get(topic, [])),
        )
    return differences + _duplicate_differences(expected, actual)


def read_output_dir(path: str | Path) -> dict[str, list[bytes]]:
    """Read ``path/<topic>.ndjson`` for the six topics; a missing file is an empty topic."""
    directory = Path(path)
    return {
        topic: list(read_ndjson(directory / f"{topic}.ndjson"))
        if (directory / f"{topic}.ndjson").exists()
        else []
        for topic in TOPICS
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: compare two output directories; return the exit status."""
    parser = argparse.ArgumentParser(description="Compare two W1 output directories.")
    parser.add_argument("expected_dir", type=Path, help="e.g. the reference's outputs")
    parser.add_argument("actual_dir", type=Path, help="the outputs under test")
    args = parser.parse_args(argv)
    expected = read_output_dir(args.expected_dir)
    differences = compare(expected, read_output_dir(args.actual_dir))
    for difference in differences:
        print(difference)
    if differences:
        return 1
    counts = ", ".join(f"{topic} {len(expected[topic])}" for topic in TOPICS)
    print(f"equal: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
