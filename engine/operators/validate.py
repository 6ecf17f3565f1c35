"""Validate: business rules beyond the schema; a row breaking one is dead-lettered."""

from __future__ import annotations

from typing import Any

import msgspec
import polars as pl

from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step, sql
from engine.operators.deadletter import reject


class Validate(Step, tag="validate"):
    """Check each row against named rules; rows breaking any go to the dead letter output.

    The reason names the first rule broken and its expression. Type and shape rules belong
    in the schema (`decode`); this step holds the rules that relate fields or need logic,
    e.g. `end_ts >= start_ts`. Stateless; order is kept.

    Args:
        rules: rule name → polars SQL expression that must be true (null counts as broken).

    >>> import polars as pl
    >>> step = Validate(rules={"positive": "amount > 0"}, name="check")
    >>> out = step.process(pl.DataFrame({"amount": [5, -1]}), None)
    >>> out["main"]["amount"].to_list(), out["dead_letter"]["_reason"].to_list()
    ([5], ['rule positive failed: amount > 0'])
    """

    rules: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("expected at least one rule")
        for rule, expression in self.rules.items():
            sql(self, f"rules.{rule}", expression)

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        passed = {
            rule: sql(self, f"rules.{rule}", expression).fill_null(False)
            for rule, expression in self.rules.items()
        }
        verdicts = batch.select(
            pl.all_horizontal(*passed.values()).alias("ok"),
            pl.coalesce(
                *[
                    pl.when(~ok).then(pl.lit(f"rule {rule} failed: {self.rules[rule]}"))
                    for rule, ok in passed.items()
                ]
            ).alias("reason"),
        )
        ok = verdicts["ok"]
        if ok.all():
            return {MAIN: batch}
        rejected = batch.filter(~ok)
        reasons = verdicts["reason"].filter(~ok)
        return {
            MAIN: batch.filter(ok),
            DEAD_LETTER: reject(rejected, reasons, self.name or self.op),
        }
