"""The Python API: build a pipeline step by step, then plan or run it.

>>> from engine import Pipeline
>>> from engine.connectors import MemorySink, MemorySource
>>> from engine.schema_examples import Greeting
>>> out, rejected = MemorySink(), MemorySink()
>>> stats = (
...     Pipeline("hello")
...     .source(MemorySource([b'{"text": "Hi"}', b'{"text": "skip"}', b"not json"]))
...     .decode(Greeting)
...     .filter("text != 'skip'")
...     .transform(set={"text": "lower(text)"})
...     .output("out", out)
...     .dead_letter("rejected", rejected)
...     .run()
... )
>>> out.records(), len(rejected.values())
([{'text': 'hi'}], 1)

The same pipeline as YAML loads into the same `PipelineSpec` (see `engine.spec`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.connectors import MemorySink, MemorySource, Sink, Source, open_sink, open_source
from engine.errors import ConfigError
from engine.metrics import serve_metrics
from engine.operators.base import Step
from engine.operators.decode import Decode, schema_path
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
from engine.plan import Plan, build_plan
from engine.runners.local import LocalRunner, Progress, RunStats
from engine.spec import (
    CheckpointSpec,
    MemorySinkSpec,
    MemorySourceSpec,
    PipelineSpec,
    SinkSpec,
    SourceSpec,
)


class Pipeline:
    """A pipeline under construction; every method returns the pipeline to chain calls.

    Sources and sinks are given as specs (`FileSourceSpec`, ...) or as live objects
    (`MemorySource`, `MemorySink`, any `Source`/`Sink`); steps as keyword arguments of the
    step's description, so each method takes exactly the fields the YAML form takes.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._source: SourceSpec | None = None
        self._live_source: Source | None = None
        self._steps: list[Step] = []
        self._sinks: dict[str, SinkSpec] = {}
        self._live_sinks: dict[str, Sink] = {}
        self._dead_letter: str | None = None
        self._output: str | None = None
        self._checkpoint: CheckpointSpec | None = None

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> Pipeline:
        pipeline = cls(spec.name)
        pipeline._source = spec.source
        pipeline._steps = list(spec.steps)
        pipeline._sinks = dict(spec.sinks)
        pipeline._dead_letter, pipeline._output = spec.dead_letter, spec.output
        pipeline._checkpoint = spec.checkpoint
        return pipeline

    # ---- where records come from and go -------------------------------------------------

    def source(self, source: SourceSpec | Source) -> Pipeline:
        if isinstance(source, msgspec.Struct):
            self._source, self._live_source = source, None
        else:
            self._source, self._live_source = MemorySourceSpec(values=[]), source
        return self

    def sink(self, name: str, sink: SinkSpec | Sink) -> Pipeline:
        if isinstance(sink, msgspec.Struct):
            self._sinks[name] = sink
        else:
            self._sinks[name] = MemorySinkSpec()
            self._live_sinks[name] = sink
        return self

    def output(self, name: str, sink: SinkSpec | Sink) -> Pipeline:
        """Send the last step's main output to `sink`, registered as `name`."""
        self._output = name
        return self.sink(name, sink)

    def dead_letter(self, name: str, sink: SinkSpec | Sink) -> Pipeline:
        """Send every rejected record, with its reason and stage, to `sink`."""
        self._dead_letter = name
        return self.sink(name, sink)

    def checkpoint(self, directory: str, interval_ms: int = 1000) -> Pipeline:
        """Checkpoint into `directory`, so that a rerun resumes there (`CheckpointSpec`)."""
        try:
            self._checkpoint = msgspec.convert(
                {"directory": directory, "interval_ms": interval_ms}, CheckpointSpec
            )
        except msgspec.ValidationError as error:
            raise ConfigError(f"pipeline {self.name!r}: checkpoint: {error}") from error
        return self

    # ---- steps --------------------------------------------------------------------------

    def then(self, step: Step) -> Pipeline:
        """Append a step description (any `Step`, including your own).

        The step is checked as its YAML form would be (bounds such as `size_ms > 0`
        included), so both forms reject the same mistakes with the same messages.
        """
        try:
            checked = msgspec.convert(msgspec.to_builtins(step), type(step))
        except msgspec.ValidationError as error:
            raise ConfigError(
                f"pipeline {self.name!r}: steps[{len(self._steps)}] ({step.op}): {error}"
            ) from error
        self._steps.append(checked)
        return self

    def decode(self, schema: type[msgspec.Struct] | str, **options: Any) -> Pipeline:
        path = schema if isinstance(schema, str) else schema_path(schema)
        return self.then(Decode(schema=path, **options))

    def key_by(self, **options: Any) -> Pipeline:
        return self.then(KeyBy(**options))

    def filter(self, where: str, **options: Any) -> Pipeline:
        return self.then(Filter(where=where, **options))

    def validate(self, rules: dict[str, str], **options: Any) -> Pipeline:
        return self.then(Validate(rules=rules, **options))

    def transform(self, **options: Any) -> Pipeline:
        return self.then(Transform(**options))

    def translate(self, mapping: dict[str, str], **options: Any) -> Pipeline:
        return self.then(Translate(mapping=mapping, **options))

    def route(self, by: str, routes: dict[str, str], **options: Any) -> Pipeline:
        return self.then(Route(by=by, routes=routes, **options))

    def split(self, field: str, **options: Any) -> Pipeline:
        return self.then(Split(field=field, **options))

    def dedup(self, **options: Any) -> Pipeline:
        return self.then(Dedup(**options))

    def tumbling_window(self, **options: Any) -> Pipeline:
        return self.then(TumblingWindow(**options))

    def sliding_window(self, **options: Any) -> Pipeline:
        return self.then(SlidingWindow(**options))

    def session_window(self, **options: Any) -> Pipeline:
        return self.then(SessionWindow(**options))

    def resequence(self, **options: Any) -> Pipeline:
        return self.then(Resequence(**options))

    def enrich(self, **options: Any) -> Pipeline:
        return self.then(Enrich(**options))

    # ---- using it -----------------------------------------------------------------------

    def spec(self) -> PipelineSpec:
        """The pipeline as data: the same object its YAML form loads into."""
        if self._source is None:
            raise ConfigError(f"pipeline {self.name!r}: no source")
        if self._dead_letter is None:
            raise ConfigError(
                f"pipeline {self.name!r}: no dead_letter sink (rejected records must go somewhere)"
            )
        try:
            return msgspec.convert(
                {
                    "name": self.name,
                    "source": self._source,
                    "steps": self._steps,
                    "sinks": self._sinks,
                    "dead_letter": self._dead_letter,
                    "output": self._output,
                    "checkpoint": self._checkpoint,
                },
                PipelineSpec,
                from_attributes=True,
            )
        except msgspec.ValidationError as error:
            raise ConfigError(f"pipeline {self.name!r}: {error}") from error

    def plan(self) -> Plan:
        return build_plan(self.spec())

    def run(
        self,
        progress: Progress | None = None,
        *,
        runner: str = "local",
        workers: int = 1,
        address: str | None = None,
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
    ) -> RunStats:
        """Run until the source ends: on the local runner (in this process), or with
        `runner="ray"` on `workers` Ray actors (`engine.runners.ray.RayRunner`; `address`: a
        running cluster, else a local one). On Ray, sources and sinks must be specs.

        With `metrics_port`, the run's figures are served for Prometheus at
        http://METRICS_ADDRESS:METRICS_PORT/metrics while it runs (`engine.metrics`)."""
        plan = self.plan()
        if runner == "ray":
            if self._live_source is not None or self._live_sinks:
                raise ConfigError(
                    f"pipeline {self.name!r}: the Ray runner opens sources and sinks in its "
                    "actors: give them as specs (FileSourceSpec, KafkaSinkSpec, ...), not as "
                    "live objects"
                )
            from engine.runners.ray import RayRunner  # imports Ray: only when asked for

            ray_runner = RayRunner(plan, workers=workers, address=address, progress=progress)
            with serve_metrics(
                self.name, ray_runner.stats, metrics_port, metrics_address, ray_runner.lag
            ):
                return ray_runner.run()
        if runner != "local":
            raise ConfigError(f"pipeline {self.name!r}: runner must be 'local' or 'ray'")
        source = self._live_source or open_source(
            plan.spec.source, checkpointed=plan.spec.checkpoint is not None
        )
        sinks = {
            name: self._live_sinks.get(name) or open_sink(spec)
            for name, spec in plan.spec.sinks.items()
        }
        local = LocalRunner(plan, source, sinks, progress)
        lag = getattr(source, "lag", None)  # a Kafka source's
        with serve_metrics(self.name, local.stats, metrics_port, metrics_address, lag):
            return local.run()


__all__ = ["MemorySink", "MemorySource", "Pipeline"]
