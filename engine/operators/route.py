"""Route: content-based router sending each row to the sink its value names."""

from __future__ import annotations

from typing import Any

import msgspec
import polars as pl

from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step, column, require_fields
from engine.operators.deadletter import reject

_ROUTE = "__route"


class Route(Step, tag="route"):
    """Send each row to the sink mapped to its `by` value; every routed row also continues.

    A route is a tap: rows go to their sinks *and* down the pipeline, so later steps (an
    aggregate, say) see the routed stream. A row whose value has no route goes to `default`
    when set, else to the dead letter output with the value in the reason: nothing is lost.
    Stateless; each sink receives rows in input order.

    Args:
        by: the field to route on (dotted for nested fields).
        routes: value → sink name.
        default: sink for values with no route.

    >>> import polars as pl
    >>> step = Route(by="region", routes={"eu": "out_eu", "us": "out_us"})
    >>> out = step.process(pl.DataFrame({"region": ["eu", "us", "eu", "mars"]}), None)
    >>> out["out_eu"].height, out["out_us"].height, out["dead_letter"]["_reason"].to_list()
    (2, 1, ["no route for region='mars'"])
    """

    by: str
    routes: dict[str, str] = msgspec.field(default_factory=dict)
    default: str | None = None

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("expected at least one route")

    def sinks(self) -> tuple[str, ...]:
        named = tuple(dict.fromkeys(self.routes.values()))
        return named + ((self.default,) if self.default and self.default not in named else ())

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (self.by,), fields)

    def process(self, batch: pl.DataFrame, state: Any) -> Outputs:
        value = batch.select(column(self.by).cast(pl.String)).to_series()
        # one grouping pass (order kept within each group) instead of a filter per sink
        groups = batch.with_columns(value.alias(_ROUTE)).partition_by(
            _ROUTE, as_dict=True, include_key=False
        )
        outputs: Outputs = {}
        for (route_value,), rows in groups.items():
            sink = self.routes.get(route_value) if route_value is not None else None
            sink = sink or self.default
            if sink is not None:
                outputs[sink] = pl.concat([outputs[sink], rows]) if sink in outputs else rows
        for sink in self.sinks():
            outputs.setdefault(sink, batch.clear())
        unrouted = ~value.is_in(list(self.routes)).fill_null(False)
        if self.default is not None or not unrouted.any():
            outputs[MAIN] = batch
            return outputs
        reasons = pl.concat_str(
            pl.lit(f"no route for {self.by}='"), pl.lit(value), pl.lit("'")
        ).fill_null(f"no route for {self.by}=null")
        outputs[DEAD_LETTER] = reject(
            batch.filter(unrouted),
            batch.select(reasons).to_series().filter(unrouted),
            self.name or self.op,
        )
        outputs[MAIN] = batch.filter(~unrouted)
        return outputs
