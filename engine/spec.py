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
from typing import Annotated, Literal

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


SourceSpec = FileSourceSpec | MemorySourceSpec
SinkSpec = FileSinkSpec | MemorySinkSpec


class PipelineTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A test kept beside a pipeline: values in, the records each sink must receive."""

    name: str
    input: list[str]
    expect: dict[str, list[dict]]


class PipelineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole pipeline: where records come from, the steps, and where they go.

    `output` names the sink of the last step's main output (optional when every record
    leaves through a route). `dead_letter` names the sink of every rejected record, so
    nothing is lost.
    """

    name: str
    source: SourceSpec
    steps: list[AnyStep]
    sinks: dict[str, SinkSpec]
    dead_letter: str
    output: str | None = None
    tests: list[PipelineTest] = []

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("expected at least one step")
        for name in (self.dead_letter, self.output):
            if name is not None and name not in self.sinks:
                raise ValueError(f"sink {name!r} is not defined in sinks")
        for index, step in enumerate(self.steps):
            for sink in step.sinks():
                if sink not in self.sinks:
                    raise ValueError(
                        f"steps[{index}] sends to sink {sink!r}, which is not defined in sinks"
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


def load_spec(path: str | Path) -> PipelineSpec:
    """Load and check a YAML pipeline; errors name the file and the field's path."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from error
    return parse_spec(expand_variables(text, str(path)), str(path))


def parse_spec(text: str, source: str = "<pipeline>") -> PipelineSpec:
    try:
        document = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from error
    try:
        return msgspec.convert(document, PipelineSpec)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{source}: {error}") from error
