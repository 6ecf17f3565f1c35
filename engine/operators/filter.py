"""Filter: keep the rows a predicate holds for."""

from __future__ import annotations

from typing import Any

import polars as pl

from engine.operators.base import MAIN, Outputs, Step, sql


class Filter(Step, tag="filter"):
    """Keep rows where `where` is true; rows where it is false or null are dropped.

    Dropping is the step's purpose, so dropped rows are not dead letters. Stateless; order
    is kept; cost is one vectorised predicate per batch.

    Args:
        where: a polars SQL expression over the row's fields, e.g.
            `type != 'order.cancelled'` or `attrs.tier IN ('gold', 'silver')`.

    >>> import polars as pl
    >>> step = Filter(where="amount > 10")
    >>> step.process(pl.DataFrame({"amount": [5, 50]}), None)["main"]["amount"].to_list()
    [50]
    """

    where: str

    def __post_init__(self) -> None:
        sql(self, "where", self.where)

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        return {MAIN: batch.filter(sql(self, "where", self.where).fill_null(False))}
