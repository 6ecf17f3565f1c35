"""Schemas of the example pipelines."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class Order(msgspec.Struct):
    """An order event from a shop system."""

    id: Annotated[str, msgspec.Meta(pattern=r"^o-[0-9]+$")]
    customer: str
    amount: Annotated[float, msgspec.Meta(ge=0)]
    status: Literal["new", "paid", "cancelled"]
