"""Ticket order: an actor's ordered calls run one at a time, in the order the driver
numbered them, on one thread, whatever order (and threads) they arrive in."""

from __future__ import annotations

import threading

import pytest

from engine.runners.ray.ordering import StaleCall, TicketOrder


def test_calls_arriving_out_of_order_run_in_ticket_order_on_one_thread() -> None:
    order = TicketOrder()
    order.start_epoch(1)
    ran: list[tuple[int, str]] = []

    def call(number: int) -> int:
        ran.append((number, threading.current_thread().name))
        return number * 10

    results: dict[int, int] = {}

    def arrive(number: int) -> None:
        results[number] = order.run((1, number), call, (number,))

    arrivals = [threading.Thread(target=arrive, args=(n,)) for n in reversed(range(6))]
    for thread in arrivals:
        thread.start()
    for thread in arrivals:
        thread.join(timeout=10)
    assert [number for number, _ in ran] == list(range(6))
    assert len({name for _, name in ran}) == 1
    assert ran[0][1] not in {thread.name for thread in arrivals}
    assert results == {n: n * 10 for n in range(6)}


def test_a_call_from_before_the_epoch_is_refused_and_a_failing_call_passes_the_turn() -> None:
    order = TicketOrder()
    order.start_epoch(1)

    def fail() -> None:
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        order.run((1, 0), fail, ())
    assert order.run((1, 1), lambda: "next", ()) == "next"
    order.start_epoch(2)
    with pytest.raises(StaleCall, match=r"call \(1, 2\) from before epoch 2"):
        order.run((1, 2), lambda: "stale", ())
    assert order.run((2, 0), lambda: "fresh", ()) == "fresh"
