"""The `conflux` command: validate, plan, run and test pipelines.

    conflux validate FILE          check a YAML pipeline; errors name the field's path
    conflux plan FILE              print its stages
    conflux run FILE [--runner local]
    conflux test FILE              run the tests kept in the pipeline's `tests:` section

Schemas named in a pipeline (`module:Struct`) are imported with the working directory and
the pipeline file's directory on the import path, as `ray job submit --working-dir .` has.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from engine.connectors import MemorySink, MemorySource
from engine.errors import ConfluxError
from engine.pipeline import Pipeline
from engine.plan import build_plan
from engine.spec import PipelineSpec, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conflux", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("validate", "check a pipeline file"),
        ("plan", "print a pipeline's stages"),
        ("run", "run a pipeline"),
        ("test", "run the tests kept in a pipeline file"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("file", type=Path)
        if name == "run":
            command.add_argument(
                "--runner",
                choices=["local"],
                default="local",
                help="where to run it (default: local, in this process)",
            )
    arguments = parser.parse_args(argv)
    sys.path[:0] = [str(Path.cwd()), str(arguments.file.resolve().parent.parent)]
    try:
        spec = load_spec(arguments.file)
        if arguments.command == "validate":
            build_plan(spec)
            print(f"{arguments.file}: ok ({len(spec.steps)} steps)")
        elif arguments.command == "plan":
            print(build_plan(spec).describe())
        elif arguments.command == "run":
            return _run(spec)
        else:
            return _test(spec)
    except ConfluxError as error:
        print(f"conflux: {error}", file=sys.stderr)
        return 2
    return 0


def _run(spec: PipelineSpec) -> int:
    stats = Pipeline.from_spec(spec).run()
    rate = stats.messages / stats.wall_seconds if stats.wall_seconds else 0.0
    print(
        f"{spec.name}: {stats.messages:,} messages in {stats.wall_seconds:.2f} s "
        f"({rate:,.0f} msg/s, {stats.cpu_seconds:.2f} CPU s)"
    )
    for sink, rows in sorted(stats.rows_out.items()):
        print(f"  {sink}: {rows:,}")
    return 0


def _test(spec: PipelineSpec) -> int:
    """Run each kept test: its input through the steps, sinks compared with `expect`."""
    failures = 0
    for test in spec.tests:
        failed = False
        sinks = {name: MemorySink() for name in spec.sinks}
        pipeline = Pipeline.from_spec(spec).source(MemorySource(test.input))
        for name, sink in sinks.items():
            pipeline.sink(name, sink)
        pipeline.run()
        for sink_name, expected in test.expect.items():
            actual = [orjson.loads(value) for value in sinks[sink_name].values()]
            if actual != expected:
                failed = True
                print(f"FAIL {test.name}: {sink_name}: expected {expected}, got {actual}")
        failures += failed
        if not failed:
            print(f"ok   {test.name}")
    print(f"{len(spec.tests) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
