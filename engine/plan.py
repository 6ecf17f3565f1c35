"""Plans: a checked pipeline, its named steps, and the stages a runner executes.

Building a plan is where mistakes surface before any record flows: every step gets a name
(its op and position unless given), each step checks that the fields it needs exist in its
input, and consecutive stateless steps are fused into one stage (`engine.rules`), which is
what a distributed runner ships to one worker per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from engine.batch import ENVELOPE_SCHEMA, RAW
from engine.operators.base import Step
from engine.spec import FileSourceSpec, PipelineSpec


@dataclass(frozen=True)
class Stage:
    """Steps run back to back on one batch; at most the last one keeps state."""

    steps: tuple[Step, ...]

    @property
    def stateful(self) -> bool:
        return any(step.stateful for step in self.steps)

    @property
    def keyed_by(self) -> tuple[str, ...]:
        return next((step.keyed_by() for step in self.steps if step.stateful), ())


@dataclass(frozen=True)
class Plan:
    """A checked pipeline ready for a runner."""

    spec: PipelineSpec
    steps: tuple[Step, ...]
    stages: tuple[Stage, ...]

    def describe(self) -> str:
        """A readable listing of the stages, their steps and where outputs go."""
        source = type(self.spec.source).__struct_config__.tag
        lines = [f"pipeline {self.spec.name}: source {source}"]
        for number, stage in enumerate(self.stages, 1):
            kind = (
                f"stateful, keyed by {', '.join(stage.keyed_by)}" if stage.stateful else "stateless"
            )
            lines.append(f"  stage {number} ({kind})")
            for step in stage.steps:
                sinks = f" -> {', '.join(step.sinks())}" if step.sinks() else ""
                lines.append(f"    {step.name}: {step.op}{sinks}")
        lines.append(f"  output -> {self.spec.output or '(none)'}")
        lines.append(f"  dead letters -> {self.spec.dead_letter}")
        return "\n".join(lines)


def build_plan(spec: PipelineSpec) -> Plan:
    """Name and check the steps of `spec`, then group them into stages."""
    from engine.rules import fuse_stateless

    steps = tuple(
        step if step.name else msgspec.structs.replace(step, name=f"{step.op}{index}")
        for index, step in enumerate(spec.steps, 1)
    )
    fields: set[str] | None = _source_fields(spec)
    for step in steps:
        step.check(fields)
        fields = step.output_fields(fields)
    naive = Plan(spec, steps, tuple(Stage((step,)) for step in steps))
    return fuse_stateless.apply(naive)


def _source_fields(spec: PipelineSpec) -> set[str] | None:
    if isinstance(spec.source, FileSourceSpec) and spec.source.format == "parquet":
        return None  # columns are known only once the file is opened
    return {RAW, *ENVELOPE_SCHEMA}
