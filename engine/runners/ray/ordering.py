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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Threads per actor: more than the calls the driver ever has outstanding at one actor.
MAX_CONCURRENCY = 64

Ticket = tuple[int, int]  # (epoch, number)


class StaleCall(RuntimeError):
    """A call from before the actor's last `configure`/`open`: dropped, not run."""


class TicketOrder:
    def __init__(self) -> None:
        self._epoch = -1
        self._next = 0
        self._running = False
        self._turn = threading.Condition()

    def start_epoch(self, epoch: int) -> None:
        """Number calls afresh from `epoch`, once the call running now has ended."""
        with self._turn:
            self._turn.wait_for(lambda: not self._running)
            self._epoch, self._next = epoch, 0
            self._turn.notify_all()

    def run(self, ticket: Ticket, call: Callable[[], Any]) -> Any:
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
            return call()
        finally:
            with self._turn:
                self._running = False
                self._next += 1
                self._turn.notify_all()


def in_order(method: F) -> F:
    """Make `method(self, *args)` a call `method(self, ticket, *args)` run in ticket order
    (`self.order` is the actor's `TicketOrder`)."""

    def ordered(self: Any, ticket: Ticket, *args: Any) -> Any:
        return self.order.run(ticket, lambda: method(self, *args))

    # not functools.wraps: Ray checks calls against the signature, which has the ticket
    ordered.__name__, ordered.__doc__ = method.__name__, method.__doc__
    return ordered  # type: ignore[return-value]
