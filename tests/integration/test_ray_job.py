"""Submission as an operator does it: `ray job submit --working-dir . -- conflux run
pipelines/w1.yaml --runner ray` against a cluster started with `ray start --head`, on the
loopback interface, with W1's Kafka form on a real broker. The job's outputs equal the
reference.

The cluster is this module's own (`ray start --head --block` in a process group of its
own, stopped through that process), apart from the one tests/integration/test_ray.py
starts in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.w1_canonical import compare
from benchmarks.w1_generate import generate
from benchmarks.w1_reference import run_reference
from engine.broker import EmbeddedBroker, free_loopback_port
from pipelines.w1 import TOPICS
from tests.integration.test_kafka import produce, read_topics

ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 60


def cluster_environment() -> dict[str, str]:
    """What README's "On Ray" section sets for a loopback-only local cluster and its
    clients: Ray's single-machine mode (no network address), one malloc arena for the
    actors, the token Ray's `ray start` writes, and this virtualenv's commands first."""
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "MALLOC_ARENA_MAX": "1",
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A `ray start --head` cluster on 127.0.0.1; yields its job API address."""
    dashboard = f"http://127.0.0.1:{free_loopback_port()}"
    command = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += [f"--port={free_loopback_port()}", "--num-cpus=2", "--dashboard-host=127.0.0.1"]
    command += [f"--dashboard-port={dashboard.rsplit(':', 1)[1]}"]
    # ports Ray would otherwise take at fixed numbers, which another cluster may hold
    command += [f"--ray-client-server-port={free_loopback_port()}"]
    command += [f"--dashboard-agent-listen-port={free_loopback_port()}"]
    head = subprocess.Popen(
        command,
        env=cluster_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not jobs_api_up(dashboard):
            assert head.poll() is None, f"ray start --head exited with {head.returncode}"
            assert time.monotonic() < deadline, f"no Ray job API at {dashboard} after 60 s"
            time.sleep(0.5)
        yield dashboard
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # and anything left behind
                os.killpg(head.pid, signal.SIGKILL)


def jobs_api_up(address: str) -> bool:
    listed = subprocess.run(
        [RAY, "job", "list", "--address", address],
        env=cluster_environment(),
        capture_output=True,
        text=True,
    )
    return listed.returncode == 0


def test_ray_job_submit_runs_w1_kafka_form_on_a_ray_start_head_cluster(
    ray_head: str, tmp_path: Path
) -> None:
    messages = list(generate(20_000, seed=11))
    with EmbeddedBroker() as broker:
        asyncio.run(produce(broker.bootstrap, "w1.in", messages, partitions=4))
        runtime_env = {"env_vars": {"W1_WORKDIR": str(tmp_path / "workdir")}}
        command = [RAY, "job", "submit", "--address", ray_head, "--working-dir", "."]
        command += ["--runtime-env-json", json.dumps(runtime_env), "--"]
        command += ["conflux", "run", "pipelines/w1.yaml", "--runner", "ray", "--workers", "2"]
        command += ["--bootstrap", broker.bootstrap, "--stop-when-idle", "2"]
        job = subprocess.run(
            command, cwd=ROOT, env=cluster_environment(), capture_output=True, text=True
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "w1: 20,000 messages" in job.stdout
        assert "succeeded" in job.stdout + job.stderr
        records = asyncio.run(read_topics(broker.bootstrap, TOPICS))
    actual = {topic: [record.value for record in records[topic]] for topic in TOPICS}
    assert compare(run_reference(messages), actual) == []
