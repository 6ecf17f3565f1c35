"""Pipeline definitions as data: the one model that YAML files and the Python API both build.

Every part is a frozen `msgspec.Struct`, so a YAML file is checked as it loads and a mistake
fails with the path of the offending field and what was expected, e.g.
``Expected `int` >= 1 - at `$.source.batch_size```. `${NAME}` in a YAML file is replaced by
the environment variable NAME before parsing; an unset variable is an error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from engine.errors import ConfigError
from engine.operators.decode import Decode
from engine.operators.dedup import Dedup
from engine.operators.enrich import Enrich
from engine.operators.filter import Filter
from engine.operators.key_by import KeyBy
from engine.operators.resequence import Resequence
from engine.operators.route import Route
from engine.operators.split import Split
from engine.operators.transform import Transform, Translate
from engine.operators.validate import Validate
from engine.operators.window import SessionWindow, SlidingWindow, TumblingWindow

AnyStep = (
    Decode
    | KeyBy
    | Filter
    | Validate
    | Transform
    | Translate
    | Route
    | Split
    | Dedup
    | TumblingWindow
    | SlidingWindow
    | SessionWindow
    | Resequence
    | Enrich
)

BatchSize = Annotated[int, msgspec.Meta(ge=1)]
#: When a Kafka source sends its next fetch (`engine.connectors.kafka.KafkaSource`).
Prefetch = Literal["when_behind", "always"]


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class FileSourceSpec(_Spec, tag="file"):
    """Read a file: NDJSON (one raw value per line, to `decode`) or Parquet (columns)."""

    path: str
    format: Literal["ndjson", "parquet"] = "ndjson"
    batch_size: BatchSize = 10_000


class MemorySourceSpec(_Spec, tag="memory"):
    """Values given inline: for pipeline tests and examples."""

    values: list[str]
    batch_size: BatchSize = 10_000


class FileSinkSpec(_Spec, tag="file"):
    """Write a file: NDJSON (one value per line) or Parquet."""

    path: str
    format: Literal["ndjson", "parquet"] = "ndjson"


class MemorySinkSpec(_Spec, tag="memory"):
    """Keep outputs in memory (tests, embedding)."""


class StartAt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Kafka start position: the first offset at or after `timestamp` (epoch ms), or
    explicit `offsets` per partition (a partition not listed starts from the earliest)."""

    timestamp: Annotated[int, msgspec.Meta(ge=0)] | None = None
    offsets: dict[int, Annotated[int, msgspec.Meta(ge=0)]] | None = None

    def __post_init__(self) -> None:
        if (self.timestamp is None) == (self.offsets is None):
            raise ValueError("expected exactly one of `timestamp` or `offsets`")


class KafkaSourceSpec(_Spec, tag="kafka"):
    """Consume a topic in a consumer group; offsets are committed once outputs are written.

    `start` applies to partitions the group has no committed offset for: `earliest`,
    `latest`, `{timestamp: MS}` or `{offsets: {PARTITION: OFFSET}}`. `stop_when_idle_ms`
    makes the run bounded: it ends after that long without a new record (tests, batch
    jobs); unset, the source runs until stopped. `prefetch` says when the next fetch is
    sent (`KafkaSource`): `when_behind` (in the background while the source is behind; once
    it has caught up, when the runner asks for the next batch) or `always` (in the
    background, aiokafka's way).
    """

    bootstrap: str
    topic: str
    group: str
    batch_size: BatchSize = 10_000
    linger_ms: Annotated[int, msgspec.Meta(ge=0)] = 50
    start: Literal["earliest", "latest"] | StartAt = "earliest"
    stop_when_idle_ms: Annotated[int, msgspec.Meta(ge=1)] | None = None
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1000)] = 10_000
    prefetch: Prefetch = "when_behind"


class KafkaSinkSpec(_Spec, tag="kafka"):
    """Produce to a topic, created with `partitions` partitions if missing.

    Keys go to the partition the Java client's default partitioner picks. `source_topic`
    is written as the `source.topic` header of dead letters; `conflux run` fills it from a
    Kafka source when it is not given.
    """

    bootstrap: str
    topic: str
    partitions: Annotated[int, msgspec.Meta(ge=1)] = 4
    compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    acks: Literal["all", 1, 0] = "all"
    source_topic: str | None = None


SourceSpec = FileSourceSpec | MemorySourceSpec | KafkaSourceSpec
SinkSpec = FileSinkSpec | MemorySinkSpec | KafkaSinkSpec


class PipelineTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A test kept beside a pipeline: values in, the records each sink must receive."""

    name: str
    input: list[str]
    expect: dict[str, list[dict]]


class CheckpointSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Checkpoint the run into `directory`, at most every `interval_ms` (0: every batch).

    With a checkpoint, a run stopped at any point (kill -9 included) and started again with
    the same directory continues from its last checkpoint and writes each output once
    (`engine.runners.checkpoint`). It needs a Kafka source, and Kafka or NDJSON sinks.
    The local runner's Kafka source then reads every partition itself, joining no group
    (`engine.connectors.open_source`): one process per group.
    """

    directory: Annotated[str, msgspec.Meta(min_length=1)]
    interval_ms: Annotated[int, msgspec.Meta(ge=0)] = 1000


class PipelineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole pipeline: where records come from, the steps, and where they go.

    `output` names the sink of the last step's main output (optional when every record
    leaves through a route). `dead_letter` names the sink of every rejected record, so
    nothing is lost. `checkpoint`, when set, makes the run resumable after a crash.
    """

    name: str
    source: SourceSpec
    steps: list[AnyStep]
    sinks: dict[str, SinkSpec]
    dead_letter: str
    output: str | None = None
    checkpoint: CheckpointSpec | None = None
    tests: list[PipelineTest] = []

    def __post_init__(self) -> None:
        # msgspec adds no path to errors of the top-level object: name it as msgspec would
        if not self.steps:
            raise ValueError("Expected at least one step - at `$.steps`")
        defined = ", ".join(sorted(self.sinks)) or "none"
        for field, name in (("dead_letter", self.dead_letter), ("output", self.output)):
            if name is not None and name not in self.sinks:
                raise ValueError(
                    f"sink {name!r} is not defined in sinks (defined: {defined}) - at `$.{field}`"
                )
        for index, step in enumerate(self.steps):
            for sink in step.sinks():
                if sink not in self.sinks:
                    raise ValueError(
                        f"sink {sink!r} is not defined in sinks (defined: {defined}) "
                        f"- at `$.steps[{index}]`"
                    )


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so a key such as `on:` stays a string."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(text: str, source: str) -> str:
    """Replace `${NAME}` by the environment variable NAME, `${NAME:-default}` likewise with
    a default; an unset variable without a default is an error naming it."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: environment variable {name} is not set")

    return _VARIABLE.sub(value, text)


def _expand(node: Any, source: str) -> Any:
    """Expand variables in string values only, after parsing: a comment is never expanded
    and a value holding `#` or `: ` cannot change the document's structure."""
    if isinstance(node, str):
        return expand_variables(node, source)
    if isinstance(node, list):
        return [_expand(item, source) for item in node]
    if isinstance(node, dict):
        return {key: _expand(value, source) for key, value in node.items()}
    return node


def load_spec(path: str | Path) -> PipelineSpec:
    """Load and check a YAML pipeline; errors name the file and the field's path."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from error
    return parse_spec(text, str(path))


def parse_spec(text: str, source: str = "<pipeline>") -> PipelineSpec:
    """Parse a YAML pipeline, expand `${NAME}` in its string values, and check it."""
    try:
        document = _expand(yaml.load(text, Loader=_Yaml12Loader), source)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from error
    try:
        return msgspec.convert(document, PipelineSpec)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{source}: {error}") from error
