"""Checkpoints: a consistent cut of a run, written so that a crash never leaves half of one.

A checkpoint holds what a run needs to continue as if it had never stopped:

- the source's position (Kafka: the next offset of each topic-partition);
- each sink's position (Kafka: the next offset of each partition of its topic, learned from
  the producer's delivery results; NDJSON: the file's length in bytes), with the records a
  Kafka sink found in its topic after a restart but has not produced again yet;
- each stateful step's `state.snapshot()`, as an Arrow IPC file named after the step.

On disk, in `directory`::

    LATEST                  the name of the newest complete checkpoint, e.g. "checkpoint-7"
    checkpoint-6/           the one before it: should the newest be damaged (a crash
                            cannot do that), LATEST pointed here resumes from it as safely
    checkpoint-7/
        manifest.json       number, source and sink positions, and the files below
        state/<step>.arrow
        unmatched/<sink>.arrow

A checkpoint is written into a temporary directory, every file fsynced, then renamed to
`checkpoint-<n>`; only then is LATEST replaced (a temporary file, fsynced, renamed over it).
Both renames are atomic, so LATEST always names a complete checkpoint, and a crash at any
point leaves either the previous checkpoint or the new one, never a mix. A leftover
temporary directory is ignored and removed by the next save. The last two checkpoints are
kept.

What is exactly once: with a Kafka source and Kafka or NDJSON sinks, a run killed at any
point and started again with the same directory (and the same broker) leaves each output
record once in its topic or file, and loses none. This holds because outputs are a function
of the input, whatever the batches (every operator guarantees it), so the records a resumed
run produces again are byte for byte those its predecessor wrote after the checkpoint.

What is not:
- Readers see the outputs a killed run wrote after its last checkpoint before the restart
  (there is no read_committed without broker transactions); an NDJSON file's tail is cut
  back, so a reader tailing it may have read lines that are written again.
- A Kafka sink that resends a batch after a delivery timeout although the first attempt
  landed duplicates it, as without checkpoints (the producer is not idempotent).
- Suppression assumes this pipeline alone writes its output topics, and that what it
  computes does not change between the crash and the restart (same pipeline, same enrich
  tables); a changed output is written, and the record it replaces stays.
- One run per directory: two runs sharing one overwrite each other's progress.

Cost: per checkpoint, one snapshot of every state and a few fsyncs (written every
`interval_ms` at most: a larger interval means less I/O and more to redo after a crash).
Per restart, each Kafka sink reads its topic from the checkpoint to the end, and holds the
records read back in memory until the resumed run has produced them again.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgspec
import polars as pl

from engine.connectors.base import Position, SinkPosition
from engine.errors import CheckpointError

LATEST = "LATEST"
_PREFIX = "checkpoint-"
_NAME = re.compile(r"checkpoint-(\d+)")
_TEMPORARY_PREFIX = ".writing-"
_MANIFEST = "manifest.json"
_FORMAT = 1
_KEEP = 2


class _Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What manifest.json holds; state and unmatched tables are files beside it."""

    format: int
    number: int
    written_at_ms: int
    source: Position
    sinks: dict[str, Position]
    states: dict[str, str]  # step name → file, relative to the checkpoint
    unmatched: dict[str, str]  # sink name → file, relative to the checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint: positions, and each stateful step's snapshot by step name."""

    number: int
    source: Position
    sinks: dict[str, SinkPosition]
    states: dict[str, pl.DataFrame]


class CheckpointStore:
    """Writes and reads the checkpoints of one run in `directory` (created if missing).

    One process at a time may use a directory: two runs sharing one would overwrite each
    other's progress.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"checkpoint directory {str(self.directory)!r}: cannot create it: {error}"
            ) from error

    def load(self) -> Checkpoint | None:
        """The checkpoint LATEST names, or None when none was ever completed.

        Raises CheckpointError naming the file when LATEST names a checkpoint that cannot be
        read (deleted or damaged by hand: a crash never causes it).
        """
        latest = self.directory / LATEST
        try:
            name = latest.read_text().strip()
        except FileNotFoundError:
            return None
        path = self.directory / name
        try:
            manifest = msgspec.json.decode((path / _MANIFEST).read_bytes(), type=_Manifest)
            states = {step: _read_table(path / file) for step, file in manifest.states.items()}
            unmatched = {
                sink: _read_table(path / file) for sink, file in manifest.unmatched.items()
            }
        except (OSError, msgspec.DecodeError, pl.exceptions.PolarsError) as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r} (named by {str(latest)!r}): {error}"
            ) from error
        return Checkpoint(
            number=manifest.number,
            source=manifest.source,
            sinks={
                sink: SinkPosition(at, unmatched.get(sink)) for sink, at in manifest.sinks.items()
            },
            states=states,
        )

    def save(
        self, source: Position, sinks: dict[str, SinkPosition], states: dict[str, pl.DataFrame]
    ) -> int:
        """Write a checkpoint atomically, make LATEST name it, and return its number."""
        number = self._next_number()
        try:
            self._write(number, source, sinks, states)
        except OSError as error:
            raise CheckpointError(
                f"checkpoint directory {str(self.directory)!r}: cannot write checkpoint "
                f"{number}: {error}"
            ) from error
        self._prune()
        return number

    def _write(
        self,
        number: int,
        source: Position,
        sinks: dict[str, SinkPosition],
        states: dict[str, pl.DataFrame],
    ) -> None:
        temporary = Path(
            tempfile.mkdtemp(prefix=f"{_TEMPORARY_PREFIX}{number}-", dir=self.directory)
        )
        state_files = {step: f"state/{safe_file_name(step)}.arrow" for step in states}
        unmatched_files = {
            sink: f"unmatched/{safe_file_name(sink)}.arrow"
            for sink, position in sinks.items()
            if position.unmatched is not None
        }
        (temporary / "state").mkdir()
        (temporary / "unmatched").mkdir()
        for step, file in state_files.items():
            _write_table(temporary / file, states[step])
        for sink, file in unmatched_files.items():
            unmatched = sinks[sink].unmatched
            assert unmatched is not None  # the files are named only for these
            _write_table(temporary / file, unmatched)
        manifest = _Manifest(
            format=_FORMAT,
            number=number,
            written_at_ms=int(time.time() * 1000),
            source=source,
            sinks={sink: position.at for sink, position in sinks.items()},
            states=state_files,
            unmatched=unmatched_files,
        )
        write_file_durably(temporary / _MANIFEST, msgspec.json.encode(manifest))
        for folder in (temporary / "state", temporary / "unmatched", temporary):
            fsync_directory(folder)
        name = f"{_PREFIX}{number}"
        os.rename(temporary, self.directory / name)
        fsync_directory(self.directory)
        latest = self.directory / f"{_TEMPORARY_PREFIX}{LATEST}"
        write_file_durably(latest, f"{name}\n".encode())
        os.replace(latest, self.directory / LATEST)
        fsync_directory(self.directory)

    def _numbers(self) -> list[int]:
        return sorted(
            int(match.group(1))
            for entry in self.directory.iterdir()
            if (match := _NAME.fullmatch(entry.name)) and entry.is_dir()
        )

    def _next_number(self) -> int:
        # past every directory, LATEST's or not: a rename never lands on an existing one
        numbers = self._numbers()
        return numbers[-1] + 1 if numbers else 0

    def _prune(self) -> None:
        """Keep the newest checkpoints (the one just written is the newest); drop older ones
        and what interrupted saves left behind."""
        kept = self._numbers()[-_KEEP:]
        for entry in self.directory.iterdir():
            match = _NAME.fullmatch(entry.name)
            stale = (match is not None and int(match.group(1)) not in kept) or (
                entry.name.startswith(_TEMPORARY_PREFIX) and entry.is_dir()
            )
            if stale:
                shutil.rmtree(entry)


def safe_file_name(name: str) -> str:
    """A step or sink name as one safe file name (readable when it is already safe)."""
    return quote(name, safe="-_.") or "_"


def _write_table(path: Path, table: pl.DataFrame) -> None:
    with path.open("wb") as file:
        table.write_ipc(file, compression="lz4")
        file.flush()
        os.fsync(file.fileno())


def _read_table(path: Path) -> pl.DataFrame:
    return pl.read_ipc(path.read_bytes())


def write_file_durably(path: Path, data: bytes) -> None:
    """Write `path` and fsync it (its directory entry needs `fsync_directory`)."""
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(path: Path) -> None:
    """Make the directory's entries (a new file, a rename) durable, not only their data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
