"""Split: one row per item of a list field."""

from __future__ import annotations

import msgspec
import polars as pl

from engine.errors import ConfigError, SchemaError
from engine.operators.base import MAIN, Outputs, Step, require_fields


class Split(Step, frozen=True, tag="split"):
    """Explode each row into one row per item of its list field `field`.

    Every other column, envelope included, is repeated on each item's row; an empty or null
    list produces no row. Items that are structs stay one struct column (flatten them with a
    later transform).

    Guarantees: stateless; rows come out in input order, a row's items in list order.

    Costs: one pass over the batch; output rows = total items, and each other column is
    gathered once per item. With `as` the list itself is kept and so repeated on each of its
    items' rows, which costs the list's length squared per row: drop it afterwards if only
    the item is needed.

    Args:
        field: a top-level List column.
        as: the item column's name; None (the default) puts the item in place of the list.

    Raises ConfigError from `check` when `field` is not in the input or `as` names another
    existing field (it would be overwritten), and SchemaError when `field` is not a list.

    >>> step = Split(field="tags")
    >>> batch = pl.DataFrame({"id": [1, 2, 3], "tags": [["a", "b"], [], ["c"]]})
    >>> step.process(batch, None)["main"].rows()
    [(1, 'a'), (1, 'b'), (3, 'c')]
    >>> step = Split(field="tags", as_="tag")
    >>> step.process(batch, None)["main"].rows()
    [(1, ['a', 'b'], 'a'), (1, ['a', 'b'], 'b'), (3, ['c'], 'c')]
    """

    field: str
    as_: str | None = msgspec.field(default=None, name="as")

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, (self.field,), fields)
        if fields is not None and self.as_ not in (None, self.field) and self.as_ in fields:
            raise ConfigError(
                f"step {self.name!r} ({self.op}): as: {self.as_!r} is already a field of its "
                f"input; expected a new name for the items of {self.field!r}"
            )

    def process(self, batch: pl.DataFrame, state: None) -> Outputs:
        dtype = batch.schema[self.field]
        if not isinstance(dtype, pl.List):
            raise SchemaError(
                f"step {self.name!r} ({self.op}): field {self.field!r} is {dtype}; expected a list"
            )
        item = self.as_ or self.field
        return {
            MAIN: batch.with_columns(pl.col(self.field).alias(item)).explode(item, keep_nulls=False)
        }
