"""The native JSON writer: what each row becomes, for every column type it meets."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from engine.json_write import write_json, write_json_lines


def written(frame: pl.DataFrame) -> list[str]:
    values, _ = write_json(frame, frame.columns)
    assert values.dtype == pl.String and values.len() == frame.height
    body = write_json_lines(frame, frame.columns)
    if body is not None:  # the NDJSON body holds the same values, each ended by a newline
        assert body.to_pybytes().decode() == "".join(f"{value}\n" for value in values)
    return values.to_list()


def test_writes_each_row_as_an_object_of_its_non_null_fields() -> None:
    frame = pl.DataFrame(
        {
            "id": ["a", None, "a long string over twelve bytes"],
            "n": pl.Series([1, -(2**63), 2**63 - 1], dtype=pl.Int64),
            "small": pl.Series([1, 2, None], dtype=pl.UInt8),
            "flag": [True, False, None],
            "nested": [{"x": 1, "y": "b"}, {"x": None, "y": "c"}, None],
            "tags": [["p", None], [], None],
            "grid": [[[1], [2, 3]], None, [[]]],
            "nothing": pl.Series([None, None, None], dtype=pl.Null),
        }
    )
    assert [orjson.loads(row) for row in written(frame)] == [
        {
            "id": "a",
            "n": 1,
            "small": 1,
            "flag": True,
            "nested": {"x": 1, "y": "b"},
            "tags": ["p", None],
            "grid": [[1], [2, 3]],
        },
        {"n": -(2**63), "small": 2, "flag": False, "nested": {"y": "c"}, "tags": []},
        {"id": "a long string over twelve bytes", "n": 2**63 - 1, "grid": [[]]},
    ]


def test_strings_are_escaped_as_json_requires() -> None:
    text = 'quote " backslash \\ newline \n tab \t bell \x07 nul \x00 é 😀 / end'
    (row,) = written(pl.DataFrame({"s": [text]}))
    assert orjson.loads(row) == {"s": text}
    assert "é😀"[0] in row and "\\u0007" in row and "\\u0000" in row  # UTF-8 stays as it is


def test_floats_are_written_as_the_shortest_text_that_reads_back() -> None:
    values = [0.1, 421.43, 5.0, -0.0, 1e-05, 1e16, 1.7976931348623157e308, 5e-324, 2.5e-4]
    rows = written(pl.DataFrame({"f": values}))
    assert rows == [f'{{"f":{value!r}}}' for value in values]


def test_a_float_json_cannot_hold_is_left_out_or_written_as_null_in_a_list() -> None:
    frame = pl.DataFrame({"f": [math.nan, math.inf, 1.5], "l": [[math.nan, 2.0], [], [-math.inf]]})
    assert written(frame) == ['{"l":[null,2.0]}', '{"l":[]}', '{"f":1.5,"l":[null]}']


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_every_finite_float_reads_back_as_itself(values: list[float]) -> None:
    rows = written(pl.DataFrame({"f": values}, schema={"f": pl.Float64}))
    assert [orjson.loads(row)["f"] for row in rows] == values
    assert all(
        math.copysign(1, orjson.loads(row)["f"]) == math.copysign(1, v)
        for row, v in zip(rows, values, strict=True)
    )


def test_other_types_are_written_as_polars_writes_them() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "at": [at, None],
            "big": pl.Series([2**64 - 1, 7], dtype=pl.UInt64),
            "f32": pl.Series([0.1, None], dtype=pl.Float32),
            "inner": [{"at": at, "n": None}, None],
        }
    )
    values, text_nulls = write_json(frame, frame.columns)
    assert [orjson.loads(row) for row in values] == [
        {
            "at": "2026-01-02T03:04:05.123456+00:00",
            "big": 2**64 - 1,
            "f32": 0.1,
            "inner": {"at": "2026-01-02T03:04:05.123456+00:00", "n": None},
        },
        {"big": 7},
    ]
    # the nested null polars wrote is reported, for the codec to remove
    assert text_nulls is not None and text_nulls.to_list() == [True, False]


def test_a_sliced_or_rechunked_frame_is_written_like_a_fresh_one() -> None:
    frame = pl.DataFrame(
        {
            "s": [f"value number {i}" for i in range(10)],
            "n": list(range(10)),
            "o": [{"k": i} for i in range(10)],
        }
    )
    two_chunks = pl.concat([frame.slice(0, 4), frame.slice(4)], rechunk=False)
    assert written(frame.slice(3, 5)) == written(frame)[3:8]
    assert written(two_chunks) == written(frame)


def test_no_rows_and_no_columns() -> None:
    assert written(pl.DataFrame({"s": []}, schema={"s": pl.String})) == []
    values, _ = write_json(pl.DataFrame({"s": ["x"], "_key": [b"k"]}), [])
    assert values.to_list() == ["{}"]


def test_lines_are_left_to_write_json_when_a_column_is_written_as_text() -> None:
    frame = pl.DataFrame({"at": [datetime(2026, 1, 1, tzinfo=UTC)], "n": [1]})
    assert write_json_lines(frame, frame.columns) is None
    assert write_json_lines(frame, ["n"]).to_pybytes() == b'{"n":1}\n'
    assert write_json_lines(frame, []).to_pybytes() == b"{}\n"
    assert write_json_lines(frame.clear(), ["n"]).to_pybytes() == b""
