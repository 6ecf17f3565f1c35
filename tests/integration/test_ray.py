"""The Ray runner on a real (local) Ray cluster: W1 equals the local runner's outputs and
the reference with 1 and 2 workers, in the file and the Kafka form; a worker killed with
SIGKILL mid-stream is recovered with no loss and no duplicate; a rescale 1→2→1 mid-stream
changes nothing in the outputs; `conflux run --runner ray` and `conflux scale` work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import ray

from benchmarks.w1_canonical import compare, read_output_dir
from benchmarks.w1_generate import W1Message, generate
from benchmarks.w1_reference import run_reference
from engine.broker import EmbeddedBroker, free_loopback_port
from engine.cli import with_kafka_settings
from engine.pipeline import Pipeline
from engine.plan import build_plan
from engine.runners.ray import RayRunner, scale
from engine.runners.ray.cluster import connect
from engine.runners.ray.runner import ActorRestarted
from engine.spec import CheckpointSpec, FileSourceSpec, PipelineSpec, load_spec
from pipelines.w1 import TOPICS
from tests.integration.test_kafka import produce, read_topics
from tests.integration.test_metrics import ScrapeEachBatch

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster for these tests (4 logical CPUs: up to 4 workers on 2 cores);
    yields its address, for commands run in other processes."""
    context = connect(num_cpus=4)
    # the project's rule: no network address outside 127.0.0.0/8
    assert all(node["NodeManagerAddress"] == "127.0.0.1" for node in ray.nodes())
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def w1_files(
    input_path: Path, output: Path, batch_size: int = 5_000, checkpoint: Path | None = None
) -> PipelineSpec:
    """pipelines/w1_files.yaml on `input_path`, writing into `output`."""
    os.environ["W1_INPUT"], os.environ["W1_OUTPUT"] = str(input_path), str(output)
    spec = load_spec(ROOT / "pipelines" / "w1_files.yaml")
    source = spec.source
    assert isinstance(source, FileSourceSpec)
    return msgspec.structs.replace(
        spec,
        source=msgspec.structs.replace(source, batch_size=batch_size),
        checkpoint=None
        if checkpoint is None
        else CheckpointSpec(directory=str(checkpoint), interval_ms=200),
    )


def after(messages: int, action: Callable[[], None]) -> Callable[[int], None]:
    """A progress callback that runs `action` once, when `messages` have been written."""
    seen = [0, False]

    def progress(count: int) -> None:
        seen[0] += count
        if seen[0] >= messages and not seen[1]:
            seen[1] = True
            action()

    return progress


@pytest.mark.parametrize("workers", [1, 2])
def test_w1_file_form_on_ray_equals_the_reference_and_the_local_runner(
    ray_cluster: str,
    w1_input: Path,
    w1_expected: dict[str, list[bytes]],
    tmp_path: Path,
    workers: int,
) -> None:
    spec = w1_files(w1_input, tmp_path / "ray")
    stats = RayRunner(build_plan(spec), workers=workers).run()
    on_ray = read_output_dir(tmp_path / "ray")
    assert compare(w1_expected, on_ray) == []
    local = w1_files(w1_input, tmp_path / "local")
    build_plan(local)  # same plan, local runner
    Pipeline.from_spec(local).run()
    assert compare(read_output_dir(tmp_path / "local"), on_ray) == []
    assert stats.messages == 100_000
    assert stats.rows_out["w1.dlq"] == len(w1_expected["w1.dlq"]) > 0


def test_a_run_on_ray_serves_the_driver_s_counts_while_it_runs(
    ray_cluster: str, w1_input: Path, w1_expected: dict[str, list[bytes]], tmp_path: Path
) -> None:
    port = free_loopback_port()
    watch = ScrapeEachBatch(port)

    spec = w1_files(w1_input, tmp_path)
    stats = Pipeline.from_spec(spec).run(watch, runner="ray", workers=2, metrics_port=port)
    scraped = watch.scraped

    run = (("pipeline", "w1"),)
    assert len(scraped) > 1 and scraped[-1][0] == stats.messages == 100_000
    for taken, samples in scraped:
        assert samples["conflux_messages_total", run] == taken
    last = scraped[-1][1]
    for sink in ("w1.out.eu", "w1.dlq"):
        written = last["conflux_rows_written_total", (*run, ("sink", sink))]
        assert written == len(w1_expected[sink])
    # the actors' CPU times are the run's figures of their own, not stages
    assert stats.actor_cpu_ns["worker"] > 0 and stats.actor_cpu_ns["writer"] > 0
    assert not any(stage.endswith("cpu") for stage in stats.stage_ns)


@ray.remote(max_restarts=-1)
class _Process:
    """A stand-in for the runner's actors: its process id, and a call that takes time."""

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_a_wait_on_a_restarted_actor_ends_with_actor_restarted(
    ray_cluster: str, w1_input: Path, tmp_path: Path
) -> None:
    """After a worker is killed, Ray at times never settles a call submitted before the
    kill; the driver's waits check the actors' processes and end with ActorRestarted (which
    the run recovers from), and a slow result on live actors is still waited for."""
    runner = RayRunner(build_plan(w1_files(w1_input, tmp_path / "out")), workers=1)
    runner.writer, runner._workers = _Process.remote(), [_Process.remote()]
    runner._pids = runner._actor_pids()
    slow = _Process.remote()
    result = slow.sleep.remote(2.5)  # longer than two checks of the actors
    assert ray.get(runner._wait([result])) == [2.5]

    pending = slow.sleep.remote(60)  # a result that will not come in time
    os.kill(runner._pids[1], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ActorRestarted, match="an actor was restarted") as raised:
        runner._wait([pending])
    assert time.monotonic() - started < 30
    assert started - 1 <= raised.value.since <= started + 1
    for actor in [slow, runner.writer, *runner._workers]:
        ray.kill(actor)


@pytest.mark.parametrize("victim", ["worker", "sink writer"])
def test_an_actor_killed_mid_stream_is_recovered_without_loss_or_duplicates(
    ray_cluster: str,
    w1_input: Path,
    w1_expected: dict[str, list[bytes]],
    tmp_path: Path,
    victim: str,
) -> None:
    spec = w1_files(w1_input, tmp_path / "out", batch_size=2_000, checkpoint=tmp_path / "ckpt")
    runner = RayRunner(build_plan(spec), workers=2)
    killed: list[int] = []

    def kill() -> None:
        writer = ray.get(runner.writer.pid.remote())
        pid = runner.worker_pids()[1] if victim == "worker" else writer
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    runner.progress = after(40_000, kill)
    stats = runner.run()
    assert killed, f"the {victim} was killed mid-stream"
    assert len(runner.recovery_seconds) == 1
    assert runner.recovery_seconds[0] < 30
    assert stats.checkpoints >= 2
    assert compare(w1_expected, read_output_dir(tmp_path / "out")) == []
    assert stats.messages >= 100_000  # the batches after the checkpoint count twice


def test_a_rescale_1_2_1_mid_stream_gives_the_same_outputs(
    ray_cluster: str, w1_input: Path, w1_expected: dict[str, list[bytes]], tmp_path: Path
) -> None:
    spec = w1_files(w1_input, tmp_path / "out", batch_size=2_000)
    runner = RayRunner(build_plan(spec), workers=1)
    seen: list[int] = []
    asked: set[int] = set()  # each rescale asked once: a late second ask would undo the next
    asking = threading.Lock()

    def ask(workers: int) -> bool:
        with asking:
            first = workers not in asked
            asked.add(workers)
            return first

    def progress(count: int) -> None:
        seen.append(count)
        total = sum(seen)
        if total >= 30_000 and runner.rescales == 0 and ask(2):
            scale(spec.name, 2)  # as `conflux scale w1 --workers 2` does, via the cluster
        if total >= 60_000 and runner.rescales == 1 and ask(1):
            runner.scale(1)  # the Python API

    # `scale` waits for the driver, which runs the callback: ask from another thread
    waiting: list[threading.Thread] = []

    def progress_in_thread(count: int) -> None:
        if runner.rescales >= 1:  # `scale` sees its 2 workers before the next rescale
            while waiting:
                waiting.pop().join()
        thread = threading.Thread(target=progress, args=(count,))
        thread.start()
        if sum(seen) < 30_000 or runner.rescales >= 1:
            thread.join()
        else:
            waiting.append(thread)

    runner.progress = progress_in_thread
    stats = runner.run()
    assert runner.rescales == 2
    assert compare(w1_expected, read_output_dir(tmp_path / "out")) == []
    assert stats.messages == 100_000


def test_conflux_run_on_ray_and_conflux_scale_from_the_command_line(
    ray_cluster: str, w1_input: Path, w1_expected: dict[str, list[bytes]], tmp_path: Path
) -> None:
    environment = {**os.environ, "W1_INPUT": str(w1_input), "W1_OUTPUT": str(tmp_path)}
    command = [sys.executable, "-m", "engine.cli", "run", "pipelines/w1_files.yaml"]
    command += ["--runner", "ray", "--workers", "2", "--address", ray_cluster]
    run = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "w1: 100,000 messages" in run.stdout
    assert compare(w1_expected, read_output_dir(tmp_path)) == []

    missing = [sys.executable, "-m", "engine.cli", "scale", "no-such-pipeline"]
    missing += ["--workers", "2", "--address", ray_cluster]
    refused = subprocess.run(missing, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "no pipeline named 'no-such-pipeline' is running" in refused.stderr


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """W1's Kafka form has fixed topic names: each test gets a broker of its own."""
    with EmbeddedBroker() as running:
        yield running


def w1_kafka(broker: EmbeddedBroker, workdir: Path) -> tuple[list[W1Message], PipelineSpec]:
    """30,000 W1 messages (seed 7) in `broker`'s w1.in (4 partitions), and pipelines/w1.yaml
    on it in batches of 2,000, checkpointed in `workdir`, ending after 2 s without input."""
    messages = list(generate(30_000, seed=7))
    asyncio.run(produce(broker.bootstrap, "w1.in", messages, partitions=4))
    os.environ["W1_WORKDIR"] = str(workdir)
    spec = with_kafka_settings(
        load_spec(ROOT / "pipelines" / "w1.yaml"), broker.bootstrap, stop_when_idle_ms=2000
    )
    source = msgspec.structs.replace(spec.source, batch_size=2_000)
    return messages, msgspec.structs.replace(spec, source=source)


@pytest.mark.parametrize("kill", [None, "worker", "sink writer"])
def test_w1_kafka_form_on_ray_equals_the_reference(
    ray_cluster: str, fresh_broker: EmbeddedBroker, tmp_path: Path, kill: str | None
) -> None:
    messages, spec = w1_kafka(fresh_broker, tmp_path)
    runner = RayRunner(build_plan(spec), workers=2)
    if kill is not None:

        def victim() -> int:
            writer = ray.get(runner.writer.pid.remote())
            return runner.worker_pids()[0] if kill == "worker" else writer

        runner.progress = after(10_000, lambda: os.kill(victim(), signal.SIGKILL))
    started = time.monotonic()
    stats = runner.run()
    assert time.monotonic() - started < 120
    assert len(runner.recovery_seconds) == (1 if kill else 0)
    records = asyncio.run(read_topics(fresh_broker.bootstrap, TOPICS))
    actual = {topic: [record.value for record in records[topic]] for topic in TOPICS}
    assert compare(run_reference(messages), actual) == []
    # after a recovery, the batches read again since the checkpoint count twice
    assert stats.messages == 30_000 if not kill else stats.messages >= 30_000


def test_a_kafka_run_on_ray_serves_each_partition_s_lag(
    ray_cluster: str, fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    _, spec = w1_kafka(fresh_broker, tmp_path)
    port = free_loopback_port()
    watch = ScrapeEachBatch(port)

    stats = Pipeline.from_spec(spec).run(watch, runner="ray", workers=2, metrics_port=port)

    assert stats.messages == 30_000
    lags = watch.lags()
    # the workers fetch ahead of what is written: never less behind than that
    assert all(30_000 - sum(lag.values()) >= taken for taken, lag in lags)
    assert any(sum(lag.values()) > 0 for _, lag in lags)
    assert lags[-1][1] == {"0": 0, "1": 0, "2": 0, "3": 0}
