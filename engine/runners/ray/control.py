"""Reaching a running pipeline: `conflux scale NAME --workers N` from any process.

A Ray-run pipeline registers a named actor, `conflux:<name>` in Ray namespace "conflux",
for as long as its driver runs. The driver polls it for a requested worker count and
reports its state to it; `scale` asks through it and waits for the driver to report the
new count.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from engine.errors import ConfluxError
from engine.runners.ray.cluster import NAMESPACE, connect


def control_name(pipeline: str) -> str:
    return f"conflux:{pipeline}"


class Control:
    """The named actor's state: a pending request and the driver's last report."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.status: dict[str, Any] = {}

    def request(self, workers: int) -> None:
        self.requested = workers

    def take(self) -> int | None:
        requested, self.requested = self.requested, None
        return requested

    def report(self, status: dict[str, Any]) -> None:
        self.status = status

    def read(self) -> dict[str, Any]:
        return self.status


def scale(pipeline: str, workers: int, address: str = "auto", timeout_s: float = 60.0) -> dict:
    """Ask the running pipeline `pipeline` to use `workers` workers; return its status once
    it does. Raises ConfluxError when no such pipeline runs or it does not rescale in time
    (its status then says why, e.g. more workers than partitions)."""
    if workers < 1:
        raise ConfluxError(f"--workers must be at least 1, got {workers}")
    connect(address, log_to_driver=False)
    try:
        control = ray.get_actor(control_name(pipeline), namespace=NAMESPACE)
    except ValueError as error:
        raise ConfluxError(
            f"no pipeline named {pipeline!r} is running on the Ray cluster at {address}"
        ) from error
    ray.get(control.request.remote(workers))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(control.read.remote())
        if status.get("refused"):
            raise ConfluxError(f"pipeline {pipeline!r} cannot rescale: {status['refused']}")
        if status.get("workers") == status.get("target") == min(workers, status["partitions"]):
            return status
        time.sleep(0.2)
    raise ConfluxError(
        f"pipeline {pipeline!r} did not rescale to {workers} workers within {timeout_s:.0f} s; "
        f"its status: {status}"
    )
