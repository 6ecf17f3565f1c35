"""Benchmark: W1 engine-only throughput, file → file on the local runner (one process).

    python -m benchmarks.w1_engine --count 1000000 --runs 3

Generates the input once (seed 42) unless it exists, then runs the W1 file form `--runs`
times, each in a fresh process so no run warms the next. Reports per run: wall time from
start to the last output written, messages per second, CPU seconds of the engine's process
(messages per CPU second is throughput per core), and nanoseconds per message spent in each
stage (read, each step, each sink's encode and write). Prints the median run as Markdown
for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.w1_generate import generate, write_ndjson

_RUN_ONE = """
import json, sys
from engine.spec import FileSourceSpec
from pipelines.w1 import file_sinks, w1
stats = w1(FileSourceSpec(path=sys.argv[1], batch_size=int(sys.argv[3])),
           file_sinks(sys.argv[2]), partition_by_key=True).run()
print(json.dumps({"messages": stats.messages, "wall": stats.wall_seconds,
                  "cpu": stats.cpu_seconds, "stages": stats.breakdown()}))
"""


def run_once(input_path: Path, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as output:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_ONE, str(input_path), output, str(batch_size)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument(
        "--input",
        type=Path,
        default=None,
        help="W1 NDJSON input (default: generated into out/bench)",
    )
    arguments = parser.parse_args(argv)
    input_path = arguments.input or Path(f"out/bench/w1-{arguments.count}.ndjson")
    if not input_path.exists():
        input_path.parent.mkdir(parents=True, exist_ok=True)
        write_ndjson(generate(arguments.count, seed=42), input_path)
    runs = [run_once(input_path, arguments.batch_size) for _ in range(arguments.runs)]
    for number, run in enumerate(runs, 1):
        print(
            f"run {number}: {run['messages'] / run['wall']:,.0f} msg/s wall, "
            f"{run['messages'] / run['cpu']:,.0f} msg/CPU-s ({run['wall']:.2f} s wall, "
            f"{run['cpu']:.2f} s CPU)"
        )
    median = sorted(runs, key=lambda run: run["wall"])[len(runs) // 2]
    rates = [run["messages"] / run["wall"] for run in runs]
    print(
        f"\nmedian of {len(runs)}: {statistics.median(rates):,.0f} msg/s; "
        f"per core {median['messages'] / median['cpu']:,.0f} msg/CPU-s\n"
    )
    print("| stage | ns/message (median run) |\n| --- | ---: |")
    for stage, ns in median["stages"].items():
        print(f"| {stage} | {ns:,.0f} |")
    print(f"| **total (wall)** | {median['wall'] * 1e9 / median['messages']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
