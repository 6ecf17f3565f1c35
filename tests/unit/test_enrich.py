"""Enrich adds reference-table columns to each row, from Parquet or CSV, and reloads on change."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import polars as pl
import pytest

from engine.errors import ConfigError
from engine.operators.enrich import Enrich

SITES = pl.DataFrame({"device": ["d1", "d2"], "site": ["north", "south"], "floor": [1, 2]})


def events() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device": ["d2", "d9", "d1", None],
            "value": [1, 2, 3, 4],
            "_partition": pl.Series([0, 0, 1, 1], dtype=pl.Int32),
            "_offset": [10, 11, 12, 13],
        }
    )


@pytest.fixture(params=["parquet", "csv"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"sites.{request.param}"
    if request.param == "parquet":
        SITES.write_parquet(path)
    else:
        SITES.write_csv(path)
    return path


def test_matching_rows_gain_the_table_columns_in_input_order(table: Path) -> None:
    step = Enrich(table=str(table), on=("device",))
    out = step.process(events(), step.new_state())
    assert out["main"].rows() == [
        ("d2", 1, 0, 10, "south", 2),
        ("d9", 2, 0, 11, None, None),
        ("d1", 3, 1, 12, "north", 1),
        (None, 4, 1, 13, None, None),
    ]
    assert out["main"].columns == ["device", "value", "_partition", "_offset", "site", "floor"]


def test_columns_and_differently_named_table_keys(tmp_path: Path) -> None:
    path = tmp_path / "sites.parquet"
    SITES.rename({"device": "id"}).write_parquet(path)
    step = Enrich(table=str(path), on=("device",), table_on=("id",), columns=("site",))
    out = step.process(events(), step.new_state())
    assert out["main"].select("device", "site").rows() == [
        ("d2", "south"),
        ("d9", None),
        ("d1", "north"),
        (None, None),
    ]


def test_required_sends_unmatched_rows_to_the_dead_letters(table: Path) -> None:
    step = Enrich(table=str(table), on=("device",), required=True, name="sites")
    out = step.process(events(), step.new_state())
    assert out["main"].select("device", "site").rows() == [("d2", "south"), ("d1", "north")]
    assert out["dead_letter"].select("_reason", "_stage", "_offset").rows() == [
        (f"no {table} row for device=d9", "sites", 11),
        (f"no {table} row for device=null", "sites", 13),
    ]


def test_a_rewritten_file_is_reloaded_after_refresh_seconds(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    SITES.write_csv(path)
    step = Enrich(table=str(path), on=("device",), columns=("site",), refresh_seconds=0)
    state = step.new_state()
    assert step.process(events(), state)["main"]["site"].to_list() == [
        "south",
        None,
        "north",
        None,
    ]
    pl.DataFrame({"device": ["d9"], "site": ["east"]}).write_csv(path)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    assert step.process(events(), state)["main"]["site"].to_list() == [None, "east", None, None]


def test_a_file_missing_at_a_refresh_keeps_the_loaded_table(tmp_path: Path) -> None:
    path = tmp_path / "sites.parquet"
    SITES.write_parquet(path)
    step = Enrich(table=str(path), on=("device",), columns=("site",), refresh_seconds=0)
    state = step.new_state()
    step.process(events(), state)
    path.unlink()
    assert step.process(events(), state)["main"]["site"].to_list()[0] == "south"


def test_without_refresh_the_table_is_loaded_once(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    SITES.write_csv(path)
    step = Enrich(table=str(path), on=("device",), columns=("site",))
    state = step.new_state()
    step.process(events(), state)
    path.unlink()
    assert step.process(events(), state)["main"]["site"].to_list()[0] == "south"


def test_snapshot_and_restore_keep_the_table_in_use(table: Path) -> None:
    step = Enrich(table=str(table), on=("device",))
    state = step.new_state()
    assert state.snapshot().is_empty()
    expected = step.process(events(), state)["main"]
    snapshot = state.snapshot()
    assert snapshot.sort("device").equals(SITES)
    table.unlink()
    restored = step.new_state()
    restored.restore(snapshot)
    assert step.process(events(), restored)["main"].equals(expected)


def test_keys_are_compared_after_casting_to_the_batch_types(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code,label\n7,seven\n8,eight\n")
    step = Enrich(table=str(path), on=("code",))
    batch = pl.DataFrame({"code": ["8", "7"]})
    assert step.process(batch, step.new_state())["main"].rows() == [("8", "eight"), ("7", "seven")]


def test_keys_that_cannot_be_cast_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code,label\nx7,seven\n")
    step = Enrich(table=str(path), on=("code",), name="codes")
    with pytest.raises(ConfigError) as error:
        step.process(pl.DataFrame({"code": [7]}), step.new_state())
    assert str(error.value).startswith(
        f"step 'codes' (enrich): table '{path}': cannot compare its keys with fields code of "
        "type Int64: conversion from `str` to `i64` failed"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    step = Enrich(table=str(tmp_path / "nope.parquet"), on=("device",), name="sites")
    message = f"step 'sites' (enrich): table file '{tmp_path / 'nope.parquet'}' does not exist"
    with pytest.raises(ConfigError) as at_build:
        step.check({"device"})
    assert str(at_build.value) == message
    with pytest.raises(ConfigError) as at_first_batch:
        step.process(events(), step.new_state())
    assert str(at_first_batch.value) == message


def test_a_missing_column_is_named(table: Path) -> None:
    step = Enrich(table=str(table), on=("device",), columns=("site", "region"), name="sites")
    with pytest.raises(ConfigError) as error:
        step.check({"device"})
    assert str(error.value) == (
        f"step 'sites' (enrich): columns: column 'region' is not in table '{table}' "
        "(columns: device, site, floor)"
    )
    keyed = Enrich(table=str(table), on=("device",), table_on=("id",), name="sites")
    with pytest.raises(ConfigError, match="table_on: column 'id' is not in table"):
        keyed.process(events(), keyed.new_state())


def test_a_missing_batch_field_is_named(table: Path) -> None:
    step = Enrich(table=str(table), on=("dev",), table_on=("device",), name="sites")
    with pytest.raises(ConfigError) as error:
        step.check({"device", "value"})
    assert str(error.value) == (
        "step 'sites' (enrich): field 'dev' is not in its input (fields: device, value)"
    )


def test_a_column_already_in_the_batch_is_refused(table: Path) -> None:
    step = Enrich(table=str(table), on=("device",), name="sites")
    message = (
        f"step 'sites' (enrich): table '{table}' would add 'site', already in the input; "
        "expected new column names (list the ones to add in `columns`)"
    )
    with pytest.raises(ConfigError) as at_build:
        step.check({"device", "site"})
    assert str(at_build.value) == message
    with pytest.raises(ConfigError) as at_batch:
        step.process(events().with_columns(site=pl.lit("x")), step.new_state())
    assert str(at_batch.value) == message


def test_a_key_held_twice_in_the_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("device,site\nd1,north\nd1,south\n")
    step = Enrich(table=str(path), on=("device",), name="sites")
    with pytest.raises(ConfigError) as error:
        step.process(events(), step.new_state())
    assert str(error.value) == (
        f"step 'sites' (enrich): table '{path}' has 2 rows sharing a key, e.g. "
        "{'device': 'd1', 'site': 'north'}; expected one row per device"
    )


def test_the_description_is_checked_when_loaded() -> None:
    with pytest.raises(msgspec.ValidationError) as error:
        msgspec.convert({"op": "enrich", "table": "x.json", "on": ["a"]}, Enrich)
    assert str(error.value) == "expected a .parquet or .csv file, got 'x.json'"
    with pytest.raises(
        msgspec.ValidationError, match=r"Expected `array` of length >= 1 - at `\$.on`"
    ):
        msgspec.convert({"op": "enrich", "table": "x.csv", "on": []}, Enrich)
    with pytest.raises(
        msgspec.ValidationError,
        match=r"expected as many table_on columns as on fields \(1\), got 2",
    ):
        msgspec.convert(
            {"op": "enrich", "table": "x.csv", "on": ["a"], "table_on": ["a", "b"]}, Enrich
        )
