"""Connecting to Ray: a running cluster, or a local one on the loopback interface only."""

from __future__ import annotations

import os
from typing import Any

import ray
from ray._private import ray_constants

#: The namespace of every actor a pipeline creates (its control actor is found by name).
NAMESPACE = "conflux"

#: Ray reads this at import: false makes a node take the loopback address (Ray's setting
#: for single-machine clusters on macOS and Windows).
_CLUSTER_ADDRESSES = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: What an actor process of ours needs in its environment. Actor methods run on threads
#: (the actors take calls concurrently, `engine.runners.ray.ordering`), and glibc gives
#: each thread its own malloc arena: W1's head chain then ran 20–25 % slower than on a
#: main thread (numpy and Arrow buffers come and go by the megabyte). One arena removes
#: the difference; the main thread (the local runner) is unaffected either way.
ACTOR_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1"}


def connect(address: str | None = None, **options: Any) -> Any:
    """Connect this process to Ray, unless it already is; returns Ray's context (None if
    already connected).

    `address`: a running cluster ("auto", "ray://host:10001", a GCS address), or None (and
    no RAY_ADDRESS) to start a local cluster for this process, even when `ray start` left
    one (or the file naming one) on this machine: "auto" joins that.

    A local cluster listens on 127.0.0.1 only: Ray would otherwise turn even
    `_node_ip_address="127.0.0.1"` into the machine's network address and bind its daemons
    there. It starts without a dashboard, whose processes would take CPU from the workers on
    a small machine, and with `ACTOR_ENVIRONMENT` in the environment its processes inherit.
    `options` go to `ray.init` (e.g. `num_cpus`).
    """
    if ray.is_initialized():
        return None
    if address is None and "RAY_ADDRESS" not in os.environ:
        # in this process (read at call time) and in the daemons and workers it starts
        os.environ[_CLUSTER_ADDRESSES] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        for name, value in ACTOR_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        options = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", **options}
        address = "local"
    return ray.init(address=address, namespace=NAMESPACE, **options)
