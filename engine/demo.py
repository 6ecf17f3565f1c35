"""`make demo`: W1 end to end on the embedded default, checked against the reference.

Generates W1 input, runs the W1 file-form pipeline on the local runner with a progress bar,
prints throughput and the per-stage breakdown, then computes the plain single-threaded
reference on the same input and compares every output topic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.w1_canonical import compare, read_output_dir
from benchmarks.w1_generate import generate, write_ndjson
from benchmarks.w1_reference import run_reference_file
from engine.spec import FileSourceSpec
from pipelines.w1 import file_sinks, w1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="W1 messages to generate")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="working directory")
    arguments = parser.parse_args(argv)
    console = Console()
    arguments.out.mkdir(parents=True, exist_ok=True)
    input_path = arguments.out / "w1.in.ndjson"
    output_dir = arguments.out / "engine"

    console.print(f"[bold]Conflux demo[/]: W1 on the local runner, {arguments.count:,} messages")
    with console.status("generating W1 input (5 % redeliveries, 1 % bad)"):
        write_ndjson(generate(arguments.count, seed=7), input_path)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("running W1", total=arguments.count)
        stats = w1(
            FileSourceSpec(path=str(input_path)),
            file_sinks(str(output_dir)),
            partition_by_key=True,
        ).run(progress=lambda count: progress.advance(task, count))

    table = Table(title="W1 outputs")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    for topic, rows in sorted(stats.rows_out.items()):
        table.add_row(topic, f"{rows:,}")
    console.print(table)
    rate = stats.messages / stats.wall_seconds
    console.print(
        f"throughput: [bold]{rate:,.0f} msg/s[/] ({stats.messages:,} messages in "
        f"{stats.wall_seconds:.2f} s wall, {stats.cpu_seconds:.2f} s CPU)"
    )
    breakdown = ", ".join(f"{stage} {ns:,.0f}" for stage, ns in stats.breakdown().items())
    console.print(f"ns per message by stage: {breakdown}")

    with console.status("computing the single-threaded reference"):
        started = time.perf_counter()
        expected = run_reference_file(input_path)
        reference_seconds = time.perf_counter() - started
    differences = compare(expected, read_output_dir(output_dir))
    if differences:
        console.print("[bold red]correctness: outputs differ from the reference[/]")
        for line in differences[:20]:
            console.print(f"  {line}")
        return 1
    console.print(
        f"correctness: [bold green]every topic equals the reference[/] "
        f"(reference took {reference_seconds:.1f} s, "
        f"{stats.wall_seconds and reference_seconds / stats.wall_seconds:.1f}× the "
        f"engine's time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
