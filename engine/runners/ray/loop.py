"""An asyncio loop (uvloop) on a thread of its own, for actors whose methods are synchronous.

Actors run one method at a time, in the order the driver submitted them, which is what the
Ray runner's barriers rely on; their Kafka clients still need a running loop, so that a
consumer prefetches and a producer's sender runs while the actor computes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its result (its exception is raised)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
