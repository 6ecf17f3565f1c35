"""Checkpoints are atomic: whatever fails while one is written, LATEST names a complete one.
A pipeline that cannot checkpoint says why before it reads anything."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from engine import Pipeline
from engine.connectors import KafkaSource, MemorySink, MemorySource
from engine.connectors.base import SinkPosition
from engine.errors import CheckpointError, ConfigError
from engine.runners import checkpoint as checkpoint_module
from engine.runners.checkpoint import Checkpoint, CheckpointStore
from engine.runners.local import LocalRunner
from engine.schema_examples import Greeting

UNMATCHED = pl.DataFrame(
    {"partition": [0, None], "key": [b"k", None], "value": [b"v", b"w"], "count": [2, 1]},
    schema={"partition": pl.Int32, "key": pl.Binary, "value": pl.Binary, "count": pl.Int64},
)


def save(store: CheckpointStore, generation: int) -> int:
    """A checkpoint whose every part says which `generation` wrote it."""
    return store.save(
        {"in": {0: generation, 1: 10 * generation}},
        {
            "out": SinkPosition({"out": {0: generation}}, UNMATCHED),
            "file": SinkPosition(100 * generation),
        },
        {
            "dedup 1/a": pl.DataFrame({"id": ["a"] * generation}, schema={"id": pl.String}),
            "window": pl.DataFrame({"n": [generation]}),
        },
    )


def assert_generation(checkpoint: Checkpoint | None, generation: int) -> None:
    assert checkpoint is not None
    assert checkpoint.source == {"in": {0: generation, 1: 10 * generation}}
    assert checkpoint.sinks["out"].at == {"out": {0: generation}}
    unmatched = checkpoint.sinks["out"].unmatched
    assert unmatched is not None
    assert_frame_equal(unmatched, UNMATCHED)
    assert checkpoint.sinks["file"] == SinkPosition(100 * generation)
    assert checkpoint.states["dedup 1/a"]["id"].to_list() == ["a"] * generation
    assert checkpoint.states["window"]["n"].to_list() == [generation]


def test_a_checkpoint_reads_back_as_written_and_the_last_two_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "work")
    assert store.load() is None
    for generation in range(1, 5):
        assert save(store, generation) == generation - 1
        assert_generation(CheckpointStore(tmp_path / "work").load(), generation)
    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == [
        "LATEST",
        "checkpoint-2",
        "checkpoint-3",
    ]
    assert (tmp_path / "work" / "LATEST").read_text() == "checkpoint-3\n"


def failing_at(count: int, calls: list[str]) -> Callable[[str, Callable[..., Any]], Any]:
    """Wraps file-system steps so that the `count`-th one raises, as a crash would stop it."""

    def wrap(name: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if len(calls) == count:
                raise OSError(f"crash at {name}")
            return step(*args, **kwargs)

        return wrapped

    return wrap


def test_a_save_stopped_at_any_step_leaves_latest_naming_a_complete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = {
        name: getattr(checkpoint_module, name)
        for name in ("_write_table", "write_file_durably", "fsync_directory")
    }
    renames = {"rename": os.rename, "replace": os.replace}
    crash_point = 0
    while True:
        crash_point += 1
        directory = tmp_path / f"crash-{crash_point}"
        store = CheckpointStore(directory)
        save(store, 1)
        calls: list[str] = []
        wrap = failing_at(crash_point, calls)
        with monkeypatch.context() as patch:
            for name, step in steps.items():
                patch.setattr(checkpoint_module, name, wrap(name, step))
            for name, step in renames.items():
                patch.setattr(os, name, wrap(name, step))
            try:
                save(store, 2)
            except CheckpointError as error:
                assert str(error).startswith(
                    f"checkpoint directory {str(directory)!r}: cannot write checkpoint 1: "
                    f"crash at {calls[-1]}"
                )
                crashed = True
            else:
                crashed = False
        # The old checkpoint until LATEST is replaced, the new one from then on.
        replaced = "replace" in calls[:-1] or not crashed
        assert_generation(CheckpointStore(directory).load(), 2 if replaced else 1)
        # The next save skips or clears what the crash left, and keeps two checkpoints.
        save(store, 3)
        assert_generation(CheckpointStore(directory).load(), 3)
        names = sorted(path.name for path in directory.iterdir())
        assert names[0] == "LATEST"
        assert len(names) == 3 and all(name.startswith("checkpoint-") for name in names[1:])
        if not crashed:
            break
    # the run that did not crash went through every kind of step
    assert set(calls) == {*steps, *renames}


def test_a_half_written_directory_is_ignored_and_cleared(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    save(store, 1)
    half = tmp_path / ".writing-1-abc"
    (half / "state").mkdir(parents=True)
    (half / "state" / "window.arrow").write_bytes(b"ARROW1 cut short")
    assert_generation(store.load(), 1)
    assert save(store, 2) == 1
    assert not half.exists()
    assert_generation(store.load(), 2)


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    save(store, 1)
    (tmp_path / "checkpoint-0" / "state" / "window.arrow").write_bytes(b"not arrow")
    with pytest.raises(CheckpointError) as raised:
        store.load()
    assert str(raised.value).startswith(
        f"checkpoint {str(tmp_path / 'checkpoint-0')!r} (named by {str(tmp_path / 'LATEST')!r}): "
    )


def test_a_checkpoint_needs_a_resumable_source_and_resumable_sinks(tmp_path: Path) -> None:
    pipeline = (
        Pipeline("greetings")
        .source(MemorySource([b'{"text": "hi"}']))
        .decode(Greeting)
        .output("out", MemorySink())
        .dead_letter("rejected", MemorySink())
        .checkpoint(str(tmp_path))
    )
    with pytest.raises(CheckpointError) as raised:
        pipeline.run()
    assert str(raised.value) == (
        "pipeline 'greetings': checkpoint: the source (MemorySource) cannot resume from a "
        "position; checkpoints need a Kafka source"
    )
    kafka = KafkaSource("127.0.0.1:1", "in", "group")  # refused before it connects
    runner = LocalRunner(pipeline.plan(), kafka, {"out": MemorySink(), "rejected": MemorySink()})
    with pytest.raises(CheckpointError) as raised:
        runner.run()
    assert str(raised.value) == (
        "pipeline 'greetings': checkpoint: sink 'out' (MemorySink) cannot resume its output; "
        "checkpoints need Kafka or NDJSON sinks"
    )


def test_a_checkpoint_interval_is_checked_when_the_pipeline_is_built() -> None:
    with pytest.raises(ConfigError) as raised:
        Pipeline("greetings").checkpoint("work", interval_ms=-1)
    assert str(raised.value) == (
        "pipeline 'greetings': checkpoint: Expected `int` >= 0 - at `$.interval_ms`"
    )
