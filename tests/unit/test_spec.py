"""A YAML pipeline loads into a PipelineSpec; a mistake names its path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.operators.decode import Decode
from engine.operators.dedup import Dedup
from engine.operators.filter import Filter
from engine.operators.route import Route
from engine.operators.transform import Transform
from engine.spec import (
    CheckpointSpec,
    FileSinkSpec,
    FileSourceSpec,
    MemorySinkSpec,
    PipelineSpec,
    PipelineTest,
    load_spec,
    parse_spec,
)

PIPELINE = """\
name: orders
source:
  type: file
  path: ${ORDERS_INPUT}
  batch_size: 500
steps:
  - op: decode
    name: validate
    schema: engine.schema_examples:Greeting
  - op: filter
    where: text != 'skip'
  - op: transform
    set:
      text: lower(text)
  - op: dedup
    on: [text]
    event_time: ts
    horizon_ms: 600000
  - op: route
    by: text
    routes: {hi: greetings}
    default: others
sinks:
  greetings: {type: file, path: "${ORDERS_OUTPUT}/greetings.ndjson"}
  others: {type: memory}
  dlq: {type: file, path: "${ORDERS_OUTPUT}/dlq.parquet", format: parquet}
dead_letter: dlq
tests:
  - name: says hi
    input: ['{"text": "HI"}']
    expect: {greetings: [{text: hi}]}
"""

EXPECTED = PipelineSpec(
    name="orders",
    source=FileSourceSpec(path="/data/in.ndjson", batch_size=500),
    steps=[
        Decode(name="validate", schema="engine.schema_examples:Greeting"),
        Filter(where="text != 'skip'"),
        Transform(set={"text": "lower(text)"}),
        Dedup(on=("text",), event_time="ts", horizon_ms=600_000),
        Route(by="text", routes={"hi": "greetings"}, default="others"),
    ],
    sinks={
        "greetings": FileSinkSpec(path="/data/out/greetings.ndjson"),
        "others": MemorySinkSpec(),
        "dlq": FileSinkSpec(path="/data/out/dlq.parquet", format="parquet"),
    },
    dead_letter="dlq",
    tests=[
        PipelineTest(
            name="says hi", input=['{"text": "HI"}'], expect={"greetings": [{"text": "hi"}]}
        )
    ],
)


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORDERS_INPUT", "/data/in.ndjson")
    monkeypatch.setenv("ORDERS_OUTPUT", "/data/out")
    path = tmp_path / "orders.yaml"
    path.write_text(PIPELINE)
    return path


def test_a_yaml_pipeline_loads_with_its_variables_expanded(pipeline_file: Path) -> None:
    assert load_spec(pipeline_file) == EXPECTED


def test_the_w1_file_pipeline_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("W1_INPUT", "in.ndjson")
    monkeypatch.setenv("W1_OUTPUT", "outdir")
    spec = load_spec(Path(__file__).parents[2] / "pipelines" / "w1_files.yaml")
    assert [step.op for step in spec.steps] == [
        "decode",
        "key_by",
        "filter",
        "transform",
        "dedup",
        "route",
        "tumbling_window",
    ]
    assert spec.sinks["w1.out.eu"] == FileSinkSpec(path="outdir/w1.out.eu.ndjson")
    assert (spec.output, spec.dead_letter) == ("w1.agg", "w1.dlq")


def test_the_w1_kafka_pipeline_checkpoints_into_w1_workdir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = Path(__file__).parents[2] / "pipelines" / "w1.yaml"
    monkeypatch.setenv("W1_WORKDIR", "work")
    assert load_spec(path).checkpoint == CheckpointSpec(directory="work", interval_ms=1000)
    monkeypatch.delenv("W1_WORKDIR")
    with pytest.raises(ConfigError) as raised:
        load_spec(path)
    assert str(raised.value) == f"{path}: environment variable W1_WORKDIR is not set"


def test_an_unset_variable_is_named(pipeline_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_OUTPUT")
    with pytest.raises(ConfigError) as raised:
        load_spec(pipeline_file)
    assert str(raised.value) == f"{pipeline_file}: environment variable ORDERS_OUTPUT is not set"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as raised:
        load_spec(path)
    assert str(raised.value) == (
        f"{path}: cannot read it: [Errno 2] No such file or directory: '{path}'"
    )


def test_invalid_yaml_names_the_file_and_the_line() -> None:
    text = PIPELINE.replace("steps:\n", "steps: [\n")
    with pytest.raises(ConfigError) as raised:
        parse_spec(text, "orders.yaml")
    message = str(raised.value)
    assert message.startswith("orders.yaml: not valid YAML: while parsing a flow node\n")
    assert "line 7, column 3" in message


PLAIN = PIPELINE.replace("${ORDERS_INPUT}", "in.ndjson").replace("${ORDERS_OUTPUT}", "out")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(
            "op: filter",
            "op: filtre",
            "Invalid value 'filtre' - at `$.steps[1].op`",
            id="unknown step op",
        ),
        pytest.param(
            "    where: text != 'skip'\n",
            "    where: text != 'skip'\n    wher: text\n",
            "Object contains unknown field `wher` - at `$.steps[1]`",
            id="unknown field in a step",
        ),
        pytest.param(
            "batch_size: 500",
            "batch_size: many",
            "Expected `int`, got `str` - at `$.source.batch_size`",
            id="wrong type",
        ),
        pytest.param(
            "batch_size: 500",
            "batch_size: 0",
            "Expected `int` >= 1 - at `$.source.batch_size`",
            id="out of bounds",
        ),
        pytest.param(
            "horizon_ms: 600000",
            "horizon_ms: -1",
            "Expected `int` >= 0 - at `$.steps[3].horizon_ms`",
            id="step field out of bounds",
        ),
        pytest.param(
            "  - op: filter\n",
            "  - \n",
            "Object missing required field `op` - at `$.steps[1]`",
            id="step without op",
        ),
        pytest.param(
            "    on: [text]\n",
            "",
            "Object missing required field `on` - at `$.steps[3]`",
            id="missing step field",
        ),
        pytest.param(
            "type: file\n  path: in.ndjson",
            "type: ftp\n  path: in.ndjson",
            "Invalid value 'ftp' - at `$.source.type`",
            id="unknown source type",
        ),
        pytest.param(
            "type: file\n  path: in.ndjson",
            "type: kafka\n  bootstrap: 127.0.0.1:9092\n  topic: in\n  group: g\n"
            "  prefetch: sometimes",
            "Invalid enum value 'sometimes' - at `$.source.prefetch`",
            id="unknown Kafka prefetch",
        ),
        pytest.param(
            "dead_letter: dlq",
            "dead_letter: rejected",
            "sink 'rejected' is not defined in sinks (defined: dlq, greetings, others) "
            "- at `$.dead_letter`",
            id="dead letter sink not defined",
        ),
        pytest.param(
            "dead_letter: dlq",
            "dead_letter: dlq\noutput: main",
            "sink 'main' is not defined in sinks (defined: dlq, greetings, others) - at `$.output`",
            id="output sink not defined",
        ),
        pytest.param(
            "default: others",
            "default: rest",
            "sink 'rest' is not defined in sinks (defined: dlq, greetings, others) "
            "- at `$.steps[4]`",
            id="step sink not defined",
        ),
        pytest.param(
            "where: text != 'skip'",
            "where: text !=",
            "filter step: where: cannot parse SQL expression 'text !=': "
            "unable to parse 'text !=' as Expr - at `$.steps[1]`",
            id="bad SQL in a filter",
        ),
        pytest.param(
            "      text: lower(text)",
            "      text: lower(text",
            "transform step: set.text: cannot parse SQL expression 'lower(text': "
            "unable to parse 'lower(text' as Expr - at `$.steps[2]`",
            id="bad SQL in a transform",
        ),
        pytest.param(
            "schema: engine.schema_examples:Greeting",
            "schema: Greeting",
            "expected 'module:StructName', got 'Greeting' - at `$.steps[0]`",
            id="schema not a path",
        ),
        pytest.param(
            "dead_letter: dlq\n",
            "",
            "Object missing required field `dead_letter`",
            id="missing top-level field",
        ),
        pytest.param(
            "dead_letter: dlq\n",
            "dead_letter: dlq\ncheckpoint: {directory: ''}\n",
            "Expected `str` of length >= 1 - at `$.checkpoint.directory`",
            id="empty checkpoint directory",
        ),
        pytest.param(
            "dead_letter: dlq\n",
            "dead_letter: dlq\ncheckpoint: {directory: work, interval_ms: -1}\n",
            "Expected `int` >= 0 - at `$.checkpoint.interval_ms`",
            id="negative checkpoint interval",
        ),
    ],
)
def test_a_mistake_names_its_path_and_what_was_expected(old: str, new: str, message: str) -> None:
    assert old in PLAIN
    with pytest.raises(ConfigError) as raised:
        parse_spec(PLAIN.replace(old, new, 1), "orders.yaml")
    assert str(raised.value) == f"orders.yaml: {message}"


def test_a_pipeline_needs_steps() -> None:
    text = PLAIN[: PLAIN.index("steps:")] + "steps: []\nsinks: {dlq: {type: memory}}\n"
    with pytest.raises(ConfigError) as raised:
        parse_spec(text + "dead_letter: dlq\n", "orders.yaml")
    assert str(raised.value) == "orders.yaml: Expected at least one step - at `$.steps`"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Expected `object`, got `null`"),
        ("- op: filter\n", "Expected `object`, got `array`"),
    ],
)
def test_a_document_that_is_not_a_mapping(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_spec(text, "orders.yaml")
    assert str(raised.value) == f"orders.yaml: {message}"


def test_variables_are_expanded_in_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_PATH", "in # not a comment: nor a key.ndjson")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = "# a comment may mention ${NOT_SET_ANYWHERE}\n" + PLAIN.replace(
        "path: in.ndjson", 'path: "${ORDERS_PATH}"', 1
    )
    spec = parse_spec(text, "orders.yaml")
    assert spec.source.path == "in # not a comment: nor a key.ndjson"
