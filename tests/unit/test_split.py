"""Split turns each row into one row per item of a list field."""

from __future__ import annotations

import msgspec
import polars as pl
import pytest

from engine.errors import ConfigError, SchemaError
from engine.operators.split import Split


def orders() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order": ["o1", "o2", "o3", "o4"],
            "lines": [
                [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
                [],
                None,
                [{"sku": "c", "qty": 3}],
            ],
            "_partition": pl.Series([0, 0, 1, 1], dtype=pl.Int32),
            "_offset": [5, 6, 7, 8],
        }
    )


def test_each_item_becomes_a_row_keeping_the_other_columns_and_envelope() -> None:
    out = Split(field="lines").process(orders(), None)
    assert out["main"].columns == ["order", "lines", "_partition", "_offset"]
    assert out["main"].rows() == [
        ("o1", {"sku": "a", "qty": 1}, 0, 5),
        ("o1", {"sku": "b", "qty": 2}, 0, 5),
        ("o4", {"sku": "c", "qty": 3}, 1, 8),
    ]


def test_as_names_the_item_column_and_keeps_the_list() -> None:
    out = Split(field="lines", as_="line").process(orders(), None)["main"]
    assert out.columns == ["order", "lines", "_partition", "_offset", "line"]
    assert out.select(
        "order", pl.col("line").struct.field("sku"), pl.col("lines").list.len()
    ).rows() == [
        ("o1", "a", 2),
        ("o1", "b", 2),
        ("o4", "c", 1),
    ]


def test_a_batch_of_empty_lists_gives_no_rows() -> None:
    batch = pl.DataFrame({"id": [1, 2]}).with_columns(
        tags=pl.Series([[], None], dtype=pl.List(pl.String))
    )
    out = Split(field="tags").process(batch, None)["main"]
    assert out.is_empty()
    assert out.schema == pl.Schema({"id": pl.Int64, "tags": pl.String})


def test_as_is_read_from_yaml_as_the_key_as() -> None:
    step = msgspec.convert({"op": "split", "field": "lines", "as": "line"}, Split)
    assert step == Split(field="lines", as_="line")
    assert msgspec.to_builtins(step)["as"] == "line"


def test_mistakes_name_the_step_and_field() -> None:
    with pytest.raises(ConfigError) as missing:
        Split(field="items", name="lines").check({"order", "lines"})
    assert str(missing.value) == (
        "step 'lines' (split): field 'items' is not in its input (fields: lines, order)"
    )
    with pytest.raises(ConfigError) as clash:
        Split(field="lines", as_="order", name="lines").check({"order", "lines"})
    assert str(clash.value) == (
        "step 'lines' (split): as: 'order' is already a field of its input; "
        "expected a new name for the items of 'lines'"
    )
    with pytest.raises(SchemaError) as not_a_list:
        Split(field="order", name="lines").process(orders(), None)
    assert str(not_a_list.value) == "step 'lines' (split): field 'order' is String; expected a list"
