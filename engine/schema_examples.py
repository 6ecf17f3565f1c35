"""Tiny schemas the docstring examples decode against."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class Greeting(msgspec.Struct):
    """A message with one text field."""

    text: str


class Order(msgspec.Struct):
    """An order with a patterned id, a bounded amount and a status from a fixed set."""

    id: Annotated[str, msgspec.Meta(pattern=r"^o-[0-9]+$")]
    amount: Annotated[float, msgspec.Meta(ge=0)]
    status: Literal["new", "paid"]
