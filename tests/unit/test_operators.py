"""Each stateless operator, key_by and dedup give the outputs their docstrings promise."""

from __future__ import annotations

import random
from collections.abc import Callable

import polars as pl
import pytest
from aiokafka.partitioner import murmur2
from polars.testing import assert_frame_equal

from engine.errors import ConfigError
from engine.operators.base import DEAD_LETTER, MAIN, Step
from engine.operators.dedup import Dedup
from engine.operators.filter import Filter
from engine.operators.key_by import KeyBy
from engine.operators.route import Route
from engine.operators.transform import Transform, Translate
from engine.operators.validate import Validate

ATTRS = pl.Struct({"email": pl.String(), "tier": pl.String()})


def events() -> pl.DataFrame:
    """Four decoded W1-like events with their envelope."""
    return pl.DataFrame(
        {
            "_key": [b"k0", b"k1", b"k2", b"k3"],
            "_partition": pl.Series([0, 1, 2, 3], dtype=pl.Int32),
            "_offset": [10, 11, 12, 13],
            "id": ["e0", "e1", "e2", "e3"],
            "type": ["order.placed", "order.cancelled", None, "contact.created"],
            "amount": [1.25, 600.0, None, 0.5],
            "region": ["eu", "us", "apac", "mars"],
            "attrs": pl.Series(
                [
                    {"email": "A@X.io", "tier": "gold"},
                    {"email": "B@Y.io", "tier": "silver"},
                    {"email": "C@Z.io", "tier": "bronze"},
                    {"email": None, "tier": "gold"},
                ],
                dtype=ATTRS,
            ),
        }
    )


# ---- filter ----------------------------------------------------------------------------


def test_filter_keeps_rows_where_the_predicate_is_true() -> None:
    out = Filter(where="type != 'order.cancelled'").process(events(), None)
    assert list(out) == [MAIN]
    # the row whose type is null makes the predicate null: it is dropped, not dead-lettered
    assert out[MAIN]["id"].to_list() == ["e0", "e3"]
    assert out[MAIN].columns == events().columns


def test_filter_on_a_nested_field() -> None:
    out = Filter(where="attrs.tier IN ('gold', 'silver')").process(events(), None)
    assert out[MAIN]["id"].to_list() == ["e0", "e1", "e3"]


# ---- validate --------------------------------------------------------------------------


def test_validate_dead_letters_rows_naming_the_first_rule_broken() -> None:
    step = Validate(
        rules={"amount in range": "amount <= 500", "has email": "attrs.email IS NOT NULL"},
        name="rules",
    )
    out = step.process(events(), None)
    assert out[MAIN]["id"].to_list() == ["e0"]
    assert out[DEAD_LETTER].select("_reason", "_stage", "_key", "_partition", "_offset").rows() == [
        ("rule amount in range failed: amount <= 500", "rules", b"k1", 1, 11),
        # a rule that is null (amount is null) counts as broken
        ("rule amount in range failed: amount <= 500", "rules", b"k2", 2, 12),
        ("rule has email failed: attrs.email IS NOT NULL", "rules", b"k3", 3, 13),
    ]


def test_validate_passes_an_all_good_batch_unchanged() -> None:
    batch = events().head(1)
    out = Validate(rules={"positive": "amount > 0"}).process(batch, None)
    assert list(out) == [MAIN]
    assert_frame_equal(out[MAIN], batch)


# ---- transform -------------------------------------------------------------------------


def test_transform_sets_a_nested_field_and_keeps_its_siblings() -> None:
    step = Transform(
        set={
            "attrs.email": "lower(attrs.email)",
            "amount_cents": "CAST(ROUND(amount * 100) AS BIGINT)",
        }
    )
    out = step.process(events(), None)[MAIN]
    assert out["attrs"].to_list() == [
        {"email": "a@x.io", "tier": "gold"},
        {"email": "b@y.io", "tier": "silver"},
        {"email": "c@z.io", "tier": "bronze"},
        {"email": None, "tier": "gold"},
    ]
    assert out["amount_cents"].to_list() == [125, 60000, None, 50]
    assert out.select("_key", "_partition", "_offset", "id").equals(
        events().select("_key", "_partition", "_offset", "id")
    )


def test_transform_set_expressions_see_the_row_as_it_came_in() -> None:
    batch = pl.DataFrame({"a": [1, 2], "b": [10, 20]})
    out = Transform(set={"a": "b", "b": "a"}).process(batch, None)[MAIN]
    assert out.to_dict(as_series=False) == {"a": [10, 20], "b": [1, 2]}


def test_transform_cast_gives_null_where_a_value_does_not_convert() -> None:
    batch = pl.DataFrame(
        {
            "n": ["1", "x", None],
            "f": ["2.5", "-", "1e3"],
            "b": ["true", "FALSE", "yes"],
            "s": [1, 2, 3],
        }
    )
    step = Transform(cast={"n": "int", "f": "float", "b": "bool", "s": "str"})
    assert step.process(batch, None)[MAIN].to_dict(as_series=False) == {
        "n": [1, None, None],
        "f": [2.5, None, 1000.0],
        "b": [True, False, None],
        "s": ["1", "2", "3"],
    }


def test_transform_casts_a_nested_field() -> None:
    batch = pl.DataFrame({"attrs": [{"level": "3", "tier": "gold"}, {"level": "?", "tier": "x"}]})
    out = Transform(cast={"attrs.level": "int"}).process(batch, None)[MAIN]
    assert out["attrs"].to_list() == [{"level": 3, "tier": "gold"}, {"level": None, "tier": "x"}]


def test_transform_sets_then_casts_then_renames_then_drops() -> None:
    batch = pl.DataFrame({"price": ["1.5", "2"], "note": ["a", "b"], "_offset": [0, 1]})
    step = Transform(
        set={"price_text": "price"},
        cast={"price": "float"},
        rename={"price": "amount"},
        drop=("note",),
    )
    assert step.process(batch, None)[MAIN].to_dicts() == [
        {"amount": 1.5, "_offset": 0, "price_text": "1.5"},
        {"amount": 2.0, "_offset": 1, "price_text": "2"},
    ]


def test_transform_needs_something_to_do() -> None:
    with pytest.raises(ValueError) as raised:
        Transform()
    assert str(raised.value) == "expected at least one of set, cast, rename, drop"


# ---- translate -------------------------------------------------------------------------


def test_translate_builds_the_new_shape_and_keeps_the_envelope() -> None:
    batch = events().head(2).with_columns(pl.lit('{"extra":1}').alias("_extra"))
    step = Translate(
        mapping={
            "customer.id": "id",
            "customer.contact.email": "lower(attrs.email)",
            "total_cents": "CAST(ROUND(amount * 100) AS BIGINT)",
        }
    )
    out = step.process(batch, None)[MAIN]
    # fields not mapped are gone, the old shape's extra fields with them
    assert out.to_dicts() == [
        {
            "_key": b"k0",
            "_partition": 0,
            "_offset": 10,
            "customer": {"id": "e0", "contact": {"email": "a@x.io"}},
            "total_cents": 125,
        },
        {
            "_key": b"k1",
            "_partition": 1,
            "_offset": 11,
            "customer": {"id": "e1", "contact": {"email": "b@y.io"}},
            "total_cents": 60000,
        },
    ]


# ---- route -----------------------------------------------------------------------------


def test_route_is_a_tap_and_dead_letters_unrouted_rows() -> None:
    step = Route(
        by="region", routes={"eu": "out.eu", "us": "out.us", "apac": "out.eu"}, name="route"
    )
    out = step.process(events(), None)
    assert out["out.eu"]["id"].to_list() == ["e0", "e2"]
    assert out["out.us"]["id"].to_list() == ["e1"]
    # every routed row also continues down the pipeline; the unrouted one does not
    assert out[MAIN]["id"].to_list() == ["e0", "e1", "e2"]
    assert out[DEAD_LETTER].select("_reason", "_stage", "_key", "_offset").rows() == [
        ("no route for region='mars'", "route", b"k3", 13)
    ]


def test_route_names_a_null_value_in_the_reason() -> None:
    batch = events().with_columns(pl.lit(None, pl.String).alias("region")).head(1)
    out = Route(by="region", routes={"eu": "out.eu"}).process(batch, None)
    assert out[DEAD_LETTER]["_reason"].to_list() == ["no route for region=null"]
    assert out[MAIN].height == 0


def test_route_sends_unrouted_rows_to_the_default_sink_in_input_order() -> None:
    step = Route(by="region", routes={"apac": "rest", "eu": "out.eu"}, default="rest")
    out = step.process(events(), None)
    assert out["out.eu"]["id"].to_list() == ["e0"]
    assert out["rest"]["id"].to_list() == ["e1", "e2", "e3"]
    assert out[MAIN]["id"].to_list() == ["e0", "e1", "e2", "e3"]
    assert DEAD_LETTER not in out


def test_route_on_a_nested_field() -> None:
    out = Route(by="attrs.tier", routes={"gold": "vip"}, default="others").process(events(), None)
    assert out["vip"]["id"].to_list() == ["e0", "e3"]
    assert out["others"]["id"].to_list() == ["e1", "e2"]


# ---- key_by ----------------------------------------------------------------------------


def kafka_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize("partitions", [1, 3, 4, 16])
def test_key_by_assigns_the_partition_kafka_would(partitions: int) -> None:
    rng = random.Random(partitions)
    alphabet = "abcxyz0123456789-_éß€😀"
    keys = [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24))) for _ in range(500)
    ] + ["cust-01234", "21", "abc"]
    batch = pl.DataFrame({"key": keys, "n": range(len(keys))})

    out = KeyBy(field="key", partitions=partitions).process(batch, None)[MAIN]

    assert out["_key"].to_list() == [key.encode() for key in keys]
    assert out["_partition"].dtype == pl.Int32
    assert out["_partition"].to_list() == [
        kafka_partition(key.encode(), partitions) for key in keys
    ]
    assert out["n"].to_list() == list(range(len(keys)))


def test_key_by_a_nested_number_and_a_null() -> None:
    batch = pl.DataFrame({"attrs": [{"customer": 42}, {"customer": None}]})
    out = KeyBy(field="attrs.customer", partitions=4).process(batch, None)[MAIN]
    assert out["_key"].to_list() == [b"42", None]
    # a null key keeps null and goes to partition 0
    assert out["_partition"].to_list() == [kafka_partition(b"42", 4), 0]


# ---- dedup -----------------------------------------------------------------------------


def stream(*events: tuple[int, str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "_partition": pl.Series([e[0] for e in events], dtype=pl.Int32),
            "id": [e[1] for e in events],
            "ts": pl.Series([e[2] for e in events], dtype=pl.Int64),
        }
    )


H = 600_000


def kept(step: Dedup, *batches: pl.DataFrame) -> list[tuple[int, str, int]]:
    state = step.new_state()
    return [row for batch in batches for row in step.process(batch, state)[MAIN].rows()]


def test_dedup_drops_a_repeat_exactly_the_horizon_back() -> None:
    step = Dedup(on=("id",), event_time="ts", horizon_ms=H)
    # the largest ts is H when the repeat comes: its emission at 0 is exactly H back
    events = stream((0, "a", 0), (0, "b", H), (0, "a", H))
    assert kept(step, events) == [(0, "a", 0), (0, "b", H)]
    assert kept(step, events[:2], events[2:]) == [(0, "a", 0), (0, "b", H)]


def test_dedup_emits_again_a_repeat_the_horizon_and_one_back() -> None:
    step = Dedup(on=("id",), event_time="ts", horizon_ms=H)
    events = stream((0, "a", 0), (0, "b", H + 1), (0, "a", 5))
    assert kept(step, events) == [(0, "a", 0), (0, "b", H + 1), (0, "a", 5)]
    # then the re-emitted event (ts 5) is what later repeats compare with
    assert kept(step, events, stream((0, "a", 6))) == [
        (0, "a", 0),
        (0, "b", H + 1),
        (0, "a", 5),
    ]


def test_dedup_counts_the_event_itself_in_the_largest_time() -> None:
    step = Dedup(on=("id",), event_time="ts", horizon_ms=H)
    assert kept(step, stream((0, "a", 0), (0, "a", H)), stream((0, "a", 2 * H + 1))) == [
        (0, "a", 0),
        (0, "a", 2 * H + 1),
    ]


def test_dedup_is_per_partition() -> None:
    step = Dedup(on=("id",), event_time="ts", horizon_ms=H)
    events = stream((0, "a", 0), (1, "a", 0), (0, "a", 1), (1, "b", 10 * H), (0, "a", 2))
    # partition 1's time moving on does not expire partition 0's entries
    assert kept(step, events) == [(0, "a", 0), (1, "a", 0), (1, "b", 10 * H)]


# ---- mistakes fail when the step is built ------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: Filter(where="amount >", name="drop small"),
            "step 'drop small' (filter): where: cannot parse SQL expression 'amount >': "
            "unable to parse 'amount >' as Expr",
            id="filter",
        ),
        pytest.param(
            lambda: Validate(rules={"ok": "amount >", "fine": "true"}, name="rules"),
            "step 'rules' (validate): rules.ok: cannot parse SQL expression 'amount >': "
            "unable to parse 'amount >' as Expr",
            id="validate",
        ),
        pytest.param(
            lambda: Transform(set={"attrs.email": "lower(attrs.email"}, name="clean"),
            "step 'clean' (transform): set.attrs.email: cannot parse SQL expression "
            "'lower(attrs.email': unable to parse 'lower(attrs.email' as Expr",
            id="transform",
        ),
        pytest.param(
            lambda: Translate(mapping={"customer.id": "SELECT key"}, name="reshape"),
            "step 'reshape' (translate): mapping.customer.id: cannot parse SQL expression "
            "'SELECT key': expected an expression (found 'SELECT' clause)",
            id="translate",
        ),
    ],
)
def test_bad_sql_fails_when_the_step_is_built(build: Callable[[], Step], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert str(raised.value) == message


def test_dedup_passes_events_whose_id_is_null() -> None:
    step = Dedup(on=("id",), event_time="ts", horizon_ms=1000)
    batch = pl.DataFrame(
        {"_partition": [0, 0, 0, 0], "id": [None, None, "a", "a"], "ts": [1, 1, 2, 2]},
        schema={"_partition": pl.Int32, "id": pl.String, "ts": pl.Int64},
    )
    state = step.new_state()
    assert step.process(batch, state)["main"]["id"].to_list() == [None, None, "a"]
    assert step.process(batch, state)["main"]["id"].to_list() == [None, None]
