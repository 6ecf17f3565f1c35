"""What every step shares: its description, its outputs and the state it declares.

A step is described by a frozen `msgspec.Struct` (so a YAML pipeline and the Python API build
the same object, and a mistake in either fails at load with the field's path). Execution is
separate: `process(batch, state)` takes one batch (a `polars.DataFrame`) and the step's state
object, owned by the runner, and returns named output batches:

- `MAIN` continues down the pipeline to the next step;
- `DEAD_LETTER` holds rejected rows shaped by `engine.batch.dead_letters`;
- any other name is a sink the step sends rows to (a route's destinations, a window's late
  events).

Steps know nothing of where they run; a runner calls `new_state` once per step and keeps the
state, snapshots it (`State.snapshot`) and restores it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import msgspec
import polars as pl

from engine.errors import ConfigError

MAIN = "main"
DEAD_LETTER = "dead_letter"

Outputs = dict[str, pl.DataFrame]


class State(Protocol):
    """A step's state: the runner creates, snapshots and restores it."""

    def snapshot(self) -> pl.DataFrame:
        """An immutable copy of the state as one table."""
        ...

    def restore(self, table: pl.DataFrame) -> None:
        """Replace the state by the one `snapshot` returned."""
        ...


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every step description; `name` defaults to the step's op and position."""

    name: str | None = None

    #: Whether the step keeps state across batches (the planner keys and checkpoints it).
    stateful: ClassVar[bool] = False

    @property
    def op(self) -> str:
        tag = type(self).__struct_config__.tag
        return str(tag)

    def sinks(self) -> tuple[str, ...]:
        """The sinks this step sends rows to directly (besides the main output)."""
        return ()

    def keyed_by(self) -> tuple[str, ...]:
        """The fields whose values must stay on one partition for the step to be correct."""
        return ()

    def check(self, fields: set[str] | None) -> None:
        """Raise `ConfigError` if the step cannot run on input with `fields` (None: unknown)."""

    def output_fields(self, fields: set[str] | None) -> set[str] | None:
        """The fields of the main output, given the input's (None: not known before run)."""
        return fields

    def new_state(self) -> Any:
        """A fresh state object, or None for a stateless step."""
        return None

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        raise NotImplementedError

    def finish(self, state: Any) -> Outputs:
        """Outputs due at the end of a bounded input; most steps have none."""
        return {}


def require_fields(step: Step, needed: tuple[str, ...], fields: set[str] | None) -> None:
    """Raise a `ConfigError` naming the step and field when a needed field is missing."""
    if fields is None:
        return
    for path in needed:
        top = path.split(".", 1)[0]
        if top not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(
                f"step {step.name!r} ({step.op}): field {path!r} is not in its input "
                f"(fields: {known})"
            )


def sql(step: Step, field: str, expression: str) -> pl.Expr:
    """Compile a polars SQL expression, failing at build time with the step and field."""
    try:
        return pl.sql_expr(expression)
    except Exception as error:  # polars raises several error types for bad SQL
        # built before the planner names it, a step may have no name yet
        label = f"step {step.name!r} ({step.op})" if step.name else f"{step.op} step"
        raise ConfigError(
            f"{label}: {field}: cannot parse SQL expression {expression!r}: {error}"
        ) from error


def column(path: str) -> pl.Expr:
    """A (possibly nested, dotted) field as an expression: `attrs.email`."""
    head, *rest = path.split(".")
    expr = pl.col(head)
    for part in rest:
        expr = expr.struct.field(part)
    return expr
