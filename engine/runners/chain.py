"""A run of steps with their states: what every runner executes on a batch.

A step's main output feeds the next step; its dead letters and side outputs (a route's
destinations, a window's late events) are collected by sink name. The local runner runs
every step of a plan as one chain; the Ray runner runs the stateless head of a plan as one
chain in any worker and the rest as another in the worker owning the batch's partitions.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import polars as pl

from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step

#: What a batch sends to each sink: sink name → frames, in order.
Routed = dict[str, list[pl.DataFrame]]


class StepChain:
    """`steps` run back to back, each with its state (created here).

    `dead_letter` names the sink of rejected rows; `output` the sink of the last step's main
    output, or None when the chain's main output goes on elsewhere (it is then returned).
    `stage_ns` accumulates nanoseconds per step name.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        dead_letter: str,
        output: str | None,
        stage_ns: dict[str, int] | None = None,
    ) -> None:
        self.steps = tuple(steps)
        self.dead_letter = dead_letter
        self.output = output
        self.states: list[Any] = [step.new_state() for step in self.steps]
        self.stage_ns = stage_ns if stage_ns is not None else defaultdict(int)

    def stateful(self) -> list[tuple[Step, Any]]:
        """The stateful steps and their states, in order."""
        pairs = zip(self.steps, self.states, strict=True)
        return [(step, state) for step, state in pairs if step.stateful]

    def push(self, batch: pl.DataFrame, start: int = 0) -> tuple[Routed, pl.DataFrame | None]:
        """Run `batch` through the steps from `start`: what goes to each sink, and the main
        output past the last step when the chain has no `output` sink (else None)."""
        routed: Routed = defaultdict(list)
        current: pl.DataFrame | None = batch
        for index in range(start, len(self.steps)):
            step = self.steps[index]
            started = time.perf_counter_ns()
            outputs = step.process(current, self.states[index])
            self.stage_ns[str(step.name)] += time.perf_counter_ns() - started
            current = self._collect(outputs, routed)
            if current is None or current.is_empty():
                return routed, None
        return routed, self._end(current, routed)

    def finish(self) -> tuple[Routed, pl.DataFrame | None]:
        """End of a bounded input: each step's `finish` outputs flow through the steps
        after it; returns like `push`."""
        routed: Routed = defaultdict(list)
        rest: list[pl.DataFrame] = []
        for index, (step, state) in enumerate(zip(self.steps, self.states, strict=True)):
            main = self._collect(step.finish(state), routed)
            if main is None or main.is_empty():
                continue
            if index + 1 < len(self.steps):
                more, main = self.push(main, index + 1)
                for sink, frames in more.items():
                    routed[sink].extend(frames)
            else:
                main = self._end(main, routed)
            if main is not None:
                rest.append(main)
        return routed, (pl.concat(rest, how="diagonal_relaxed") if rest else None)

    def _end(self, main: pl.DataFrame | None, routed: Routed) -> pl.DataFrame | None:
        if main is None or self.output is None:
            return main
        routed[self.output].append(main)
        return None

    def _collect(self, outputs: Outputs, routed: Routed) -> pl.DataFrame | None:
        for name, frame in outputs.items():
            if name == MAIN or frame.is_empty():
                continue
            routed[self.dead_letter if name == DEAD_LETTER else name].append(frame)
        return outputs.get(MAIN)


def merged(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """One frame of a sink's frames (their columns may differ: absent ones become null)."""
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
