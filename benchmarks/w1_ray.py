"""Benchmark: W1 engine-only on the Ray runner (1 and 2 workers) against the local runner,
and the recovery time after a worker is killed.

    python -m benchmarks.w1_ray --count 1000000 --runs 3

One local Ray cluster (started once, as a session would) serves every Ray run. Each round
runs, in this order, the local runner, Ray with 1 worker and Ray with 2 workers on the same
input (file form, batch 10,000), so each round's ratios compare runs made minutes apart.
The local runner runs in a fresh process; the Ray runs' wall time counts from the runner's
start (actors created, sinks opened) to the last output written ("from start"); the
runner also reports how long its actors took to start, and the rate over the rest of the
run ("once started") compares the engines' sustained throughput. Then one run with 2
workers has a worker killed with SIGKILL halfway: the recovery time is from the failure
seen by the driver to the first batch written after the restore.

Where the CPU goes, per Ray run: the workers' and the sink writer's own CPU time (each actor
times itself, imports excluded), the driver's (this process), and that of Ray's processes
that outlive the run (raylet, GCS and the other daemons, idle workers), summed over the run;
then the cores the run kept busy once started (all of it over the wall time after the
actors' start, which a little overstates it: the driver's and the daemons' part of the
start is in). From those, "2 workers' ceiling / 1 worker": the rate the 2-worker run would
reach with every core busy at its CPU per message, over the 1-worker run's rate once
started. Two workers cannot pass it on this machine without spending less CPU per message
than they do.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import tempfile
from pathlib import Path

import psutil

from benchmarks.w1_engine import run_once
from benchmarks.w1_generate import generate, write_ndjson
from engine.runners.ray import RayRunner
from engine.runners.ray.cluster import connect
from engine.spec import FileSourceSpec
from pipelines.w1 import file_sinks, w1

CORES = os.cpu_count() or 1


def driver_cpu() -> float:
    """CPU seconds of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ray_processes_cpu() -> dict[int, float]:
    """CPU seconds so far of each process this one started (Ray's daemons and workers)."""
    cpu = {}
    for process in psutil.Process().children(recursive=True):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        cpu[process.pid] = times.user + times.system
    return cpu


def ray_run(input_path: Path, workers: int, batch_size: int, kill_at: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as output:
        source = FileSourceSpec(path=str(input_path), batch_size=batch_size)
        pipeline = w1(source, file_sinks(output), partition_by_key=True)
        runner = RayRunner(pipeline.plan(), workers=workers)
        if kill_at is not None:
            seen = [0]

            def kill(count: int) -> None:
                seen[0] += count
                if seen[0] >= kill_at and not runner.recovery_seconds and seen[0] < 10**9:
                    os.kill(runner.worker_pids()[-1], signal.SIGKILL)
                    seen[0] = 10**9

            runner.progress = kill
        driver_before, ray_before = driver_cpu(), ray_processes_cpu()
        stats = runner.run()
        driver, ray_after = driver_cpu() - driver_before, ray_processes_cpu()
    running = stats.wall_seconds - runner.startup_seconds
    # processes alive before and after: the actors are stopped at the end of the run
    ray_own = sum(ray_after[pid] - ray_before[pid] for pid in ray_before.keys() & ray_after)
    cpu = {
        "workers": stats.actor_cpu_ns["worker"] / 1e9,
        "writer": stats.actor_cpu_ns["writer"] / 1e9,
        "driver": driver,
        "Ray's daemons": ray_own,
    }
    return {
        "wall": stats.wall_seconds,
        "rate": stats.messages / stats.wall_seconds,
        "running rate": stats.messages / running,
        "startup": runner.startup_seconds,
        "actor cpu per message": sum(stats.actor_cpu_ns.values()) / stats.messages,
        "recovery": runner.recovery_seconds,
        "stages": stats.breakdown(),
        "workers": workers,
        "cpu": cpu,
        "cores busy": sum(cpu.values()) / running,
        "cpu per message": sum(cpu.values()) / stats.messages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--input", type=Path, default=Path("out/bench/w1-1000000.ndjson"))
    arguments = parser.parse_args(argv)
    if not arguments.input.exists():
        arguments.input.parent.mkdir(parents=True, exist_ok=True)
        write_ndjson(generate(arguments.count, seed=42), arguments.input)
    connect(log_to_driver=False)
    rounds = []
    cpu_by_process: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for number in range(arguments.runs):
        local = run_once(arguments.input, arguments.batch_size)
        local_rate = local["messages"] / local["wall"]
        one = ray_run(arguments.input, 1, arguments.batch_size)
        two = ray_run(arguments.input, 2, arguments.batch_size)
        rounds.append(
            {
                "local": local_rate,
                "1 worker": one["rate"],
                "1 worker running": one["running rate"],
                "2 workers": two["rate"],
                "2 workers running": two["running rate"],
                "1 worker / local": one["rate"] / local_rate,
                "1 worker running / local": one["running rate"] / local_rate,
                "2 / 1 workers": two["rate"] / one["rate"],
                "2 / 1 workers running": two["running rate"] / one["running rate"],
                "1 worker: cores busy once started": one["cores busy"],
                "2 workers: cores busy once started": two["cores busy"],
                "2 workers' ceiling / 1 worker running": (
                    CORES / two["cpu per message"] / one["running rate"]
                ),
            }
        )
        for run in (one, two):
            cpu_by_process[run["workers"]].append(run["cpu"])
        print(
            f"round {number + 1}: local {local_rate:,.0f} msg/s | Ray 1 worker "
            f"{one['rate']:,.0f} from start, {one['running rate']:,.0f} once started "
            f"(start {one['startup']:.2f} s, actors {one['actor cpu per message']:,.0f} CPU "
            f"ns/msg) | Ray 2 workers {two['rate']:,.0f} from start, "
            f"{two['running rate']:,.0f} once started (start {two['startup']:.2f} s, actors "
            f"{two['actor cpu per message']:,.0f} CPU ns/msg)",
            flush=True,
        )
    killed = ray_run(arguments.input, 2, arguments.batch_size, kill_at=arguments.count // 2)
    print(f"\n| figure (median of {arguments.runs} rounds) | value |\n| --- | ---: |")
    for figure in rounds[0]:
        median = statistics.median(r[figure] for r in rounds)
        shown = f"{median:,.0f} msg/s" if median > 100 else f"{median:.2f}"
        print(f"| {figure} | {shown} |")
    print(f"| recovery after SIGKILL of a worker | {killed['recovery']} s |")
    print("\n| CPU seconds per run (median of the rounds) | 1 worker | 2 workers |")
    print("| --- | ---: | ---: |")
    for process in cpu_by_process[1][0]:
        one_cpu, two_cpu = (
            statistics.median(run[process] for run in cpu_by_process[count]) for count in (1, 2)
        )
        print(f"| {process} | {one_cpu:.2f} | {two_cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
