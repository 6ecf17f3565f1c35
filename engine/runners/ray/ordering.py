"""Calls that run in the order the driver numbered them, whatever order they arrive in.

The Ray runner's barriers need each actor to run the driver's calls in submission order: a
`snapshot` must see exactly the batches submitted before it. Ray keeps that order for a
plain actor, but not for calls sent to an actor while it restarts (they reach the new
instance late, after the calls of the recovery), nor for threaded actors. So every
order-sensitive call carries a ticket `(epoch, number)`: numbers count 0, 1, 2, ... per actor
within an epoch, and a call waits for its turn. Actors are threaded (`max_concurrency`), so
a call that arrives early waits in a thread while the one before it runs; one ticket's work
runs at a time.

A call that starts a new epoch (`configure`, `open`: at a start, a recovery, a rescale)
waits for the running call to end; calls of older epochs then fail with `StaleCall`
instead of running.

Ordered calls run on one thread of the actor's, not on whichever of Ray's threads took the
call: a batch's columns are allocated on one call's thread and freed on a later one's, and
thread-local allocator caches and arenas then stay cold (W1 on one worker, A/B in
alternation: 206–258k msg/s on Ray's threads, 267–285k on one; benchmarks/RESULTS.md).
That thread does not call Ray: the objects a call needs travel as `Fetch` and are fetched
on the Ray thread that took the call, before its turn is handed over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

F = TypeVar("F", bound=Callable[..., Any])

#: Threads per actor: more than the calls the driver ever has outstanding at one actor.
MAX_CONCURRENCY = 64

Ticket = tuple[int, int]  # (epoch, number)


@dataclass(frozen=True)
class Fetch:
    """Objects an ordered call needs, fetched when its turn comes; the call gets their
    values in a list in place of this.

    References inside an argument are not dependencies Ray waits for before it hands the
    call over (a reference given as an argument would be, and Ray might then run calls out
    of submission order, which checkpoint barriers rely on: `engine.runners.ray.runner`).
    """

    refs: list[ray.ObjectRef]


class StaleCall(RuntimeError):
    """A call from before the actor's last `configure`/`open`: dropped, not run."""


class TicketOrder:
    def __init__(self) -> None:
        self._epoch = -1
        self._next = 0
        self._running = False
        self._turn = threading.Condition()
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ordered-calls")

    def start_epoch(self, epoch: int) -> None:
        """Number calls afresh from `epoch`, once the call running now has ended."""
        with self._turn:
            self._turn.wait_for(lambda: not self._running)
            self._epoch, self._next = epoch, 0
            self._turn.notify_all()

    def run(self, ticket: Ticket, call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run `call(*args)` on the ordered calls' thread once `ticket`'s turn has come,
        each `Fetch` among `args` replaced by its objects."""
        epoch, number = ticket
        with self._turn:
            self._turn.wait_for(
                lambda: (
                    self._epoch > epoch
                    or (self._epoch == epoch and self._next == number and not self._running)
                )
            )
            if self._epoch > epoch:
                raise StaleCall(f"call {ticket} from before epoch {self._epoch}")
            self._running = True
        try:
            args = tuple(ray.get(arg.refs) if isinstance(arg, Fetch) else arg for arg in args)
            return self._compute.submit(call, *args).result()
        finally:
            with self._turn:
                self._running = False
                self._next += 1
                self._turn.notify_all()


def in_order(method: F) -> F:
    """Make `method(self, *args)` a call `method(self, ticket, *args)` run in ticket order
    (`self.order` is the actor's `TicketOrder`)."""

    def ordered(self: Any, ticket: Ticket, *args: Any) -> Any:
        return self.order.run(ticket, method, (self, *args))

    # not functools.wraps: Ray checks calls against the signature, which has the ticket
    ordered.__name__, ordered.__doc__ = method.__name__, method.__doc__
    return ordered  # type: ignore[return-value]
