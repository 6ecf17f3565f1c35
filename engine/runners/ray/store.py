"""The Ray runner's checkpoint store: a local path or any `pyarrow.fs` URI (s3://, gs://, ...).

Keyed state is kept per partition, so a checkpoint taken with N workers restores onto any
number of them: each worker reads the files of the partitions it owns. Layout::

    LATEST                              name of the newest complete checkpoint
    checkpoint-7/manifest.json          positions, and the files below
    checkpoint-7/state/<step>/p<k>.arrow    rows of partition k of a step's snapshot
    checkpoint-7/state/<step>/shared.arrow  a snapshot without partitions (replicated, e.g.
                                            an enrich table), written by worker 0
    checkpoint-7/state/<step>/w<i>.arrow    rows whose partition is null, of worker i
    checkpoint-7/unmatched/<sink>.arrow     records a Kafka sink read back after a restart

Workers write their state files (Arrow IPC) while the pipeline runs on; the driver writes
manifest.json once every worker and the sinks have passed the barrier, then LATEST. A
checkpoint LATEST does not name is incomplete and never read, so a crash at any point
leaves the previous checkpoint in force, on any file system (object stores have no
rename: writing LATEST last is the commit). The last two checkpoints are kept.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from engine.batch import PARTITION
from engine.connectors.base import Offsets, Position, SinkPosition
from engine.errors import CheckpointError
from engine.runners.checkpoint import fsync_directory, safe_file_name, write_file_durably
from engine.runners.ray.splits import SplitPosition

LATEST = "LATEST"
_NAME = re.compile(r"checkpoint-(\d+)")
_FORMAT = 1
_KEEP = 2


class StateFiles(msgspec.Struct, frozen=True):
    """Where one step's snapshot is: per partition, replicated, or per worker (rows
    without a partition)."""

    partitions: dict[int, str] = {}
    shared: str | None = None
    workers: dict[int, str] = {}


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What manifest.json holds. Exactly one of `offsets` (Kafka) and `split` (a bounded
    source: file or memory) is set."""

    format: int
    number: int
    written_at_ms: int
    partitions: int
    workers: int
    offsets: Offsets | None
    split: SplitPosition | None
    sinks: dict[str, Position]
    unmatched: dict[str, str]
    states: dict[str, StateFiles]


class RayCheckpointStore:
    """Checkpoints of one run under `location` (a path or URI; created when missing)."""

    def __init__(self, location: str) -> None:
        self.location = location
        try:
            if "://" in location:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).absolute())
            self.fs.create_dir(self.root, recursive=True)
        except (OSError, pa.ArrowException) as error:
            raise CheckpointError(f"checkpoint store {location!r}: {error}") from error

    # ---- names ------------------------------------------------------------------------

    def directory(self, number: int) -> str:
        return f"{self.root}/checkpoint-{number}"

    def next_number(self) -> int:
        """Past every checkpoint directory, complete or not."""
        numbers = self._numbers()
        return numbers[-1] + 1 if numbers else 0

    # ---- tables, written by workers and the driver ----------------------------------------

    def write_table(self, path: str, table: pl.DataFrame) -> None:
        """Write `table` as Arrow IPC, as durably as the manifest that will name it."""
        encoded = io.BytesIO()
        table.write_ipc(encoded, compression="lz4")
        self._write_bytes(path, encoded.getvalue())

    def read_table(self, path: str) -> pl.DataFrame:
        try:
            with self.fs.open_input_file(path) as file:
                return pl.read_ipc(file.read())
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as error:
            raise CheckpointError(f"checkpoint store: cannot read {path!r}: {error}") from error

    def write_state(
        self, number: int, step: str, table: pl.DataFrame, owned: tuple[int, ...], worker: int
    ) -> StateFiles:
        """Write `worker`'s snapshot of `step`, one file per partition it owns."""
        folder = f"{self.directory(number)}/state/{safe_file_name(step)}"
        if PARTITION not in table.columns:
            if worker != 0:  # replicated: every worker holds the same
                return StateFiles()
            self.write_table(f"{folder}/shared.arrow", table)
            return StateFiles(shared=f"{folder}/shared.arrow")
        partition = table.get_column(PARTITION)
        files: dict[int, str] = {}
        for owned_partition in owned:
            files[owned_partition] = f"{folder}/p{owned_partition}.arrow"
            self.write_table(files[owned_partition], table.filter(partition == owned_partition))
        unpartitioned = table.filter(partition.is_null())
        if unpartitioned.is_empty():
            return StateFiles(partitions=files)
        self.write_table(f"{folder}/w{worker}.arrow", unpartitioned)
        return StateFiles(partitions=files, workers={worker: f"{folder}/w{worker}.arrow"})

    def read_state(self, files: StateFiles, owned: tuple[int, ...], worker: int) -> pl.DataFrame:
        """The snapshot a worker owning `owned` restores (rows of those partitions)."""
        if files.shared is not None:
            return self.read_table(files.shared)
        paths = [files.partitions[p] for p in owned if p in files.partitions]
        if worker in files.workers:
            paths.append(files.workers[worker])
        tables = [self.read_table(path) for path in paths]
        return pl.concat(tables, how="diagonal_relaxed") if tables else pl.DataFrame()

    # ---- manifests ----------------------------------------------------------------------

    def commit(
        self,
        number: int,
        *,
        partitions: int,
        workers: int,
        offsets: Offsets | None,
        split: SplitPosition | None,
        sinks: dict[str, SinkPosition],
        states: dict[str, StateFiles],
    ) -> Manifest:
        """Write checkpoint `number`'s manifest, then make LATEST name it."""
        directory = self.directory(number)
        unmatched: dict[str, str] = {}
        for sink, position in sinks.items():
            if position.unmatched is not None:
                unmatched[sink] = f"{directory}/unmatched/{safe_file_name(sink)}.arrow"
                self.write_table(unmatched[sink], position.unmatched)
        manifest = Manifest(
            format=_FORMAT,
            number=number,
            written_at_ms=int(time.time() * 1000),
            partitions=partitions,
            workers=workers,
            offsets=offsets,
            split=split,
            sinks={sink: position.at for sink, position in sinks.items()},
            unmatched=unmatched,
            states=states,
        )
        if isinstance(self.fs, pafs.LocalFileSystem):  # the folders the state files made
            for folder, _, _ in os.walk(directory, topdown=False):
                fsync_directory(Path(folder))
        self._write_bytes(f"{directory}/manifest.json", msgspec.json.encode(manifest))
        self._write_bytes(f"{self.root}/{LATEST}", f"checkpoint-{number}\n".encode())
        self._prune(number)
        return manifest

    def load(self) -> Manifest | None:
        """The checkpoint LATEST names, or None when none was completed."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{LATEST}") as stream:
                name = stream.read().decode().strip()
        except FileNotFoundError:
            return None
        path = f"{self.root}/{name}/manifest.json"
        try:
            with self.fs.open_input_stream(path) as stream:
                return msgspec.json.decode(stream.read(), type=Manifest)
        except (OSError, msgspec.DecodeError) as error:
            raise CheckpointError(f"checkpoint {path!r} (named by LATEST): {error}") from error

    def sink_positions(self, manifest: Manifest) -> dict[str, SinkPosition]:
        return {
            sink: SinkPosition(
                at,
                self.read_table(manifest.unmatched[sink]) if sink in manifest.unmatched else None,
            )
            for sink, at in manifest.sinks.items()
        }

    def _write_bytes(self, path: str, data: bytes) -> None:
        """Write `path` whole; on a local disk through a renamed temporary file, fsynced
        with its directory (as the local runner's store does: a checkpoint LATEST names
        survives a power loss, state files included)."""
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                temporary = Path(path).with_name(f".writing-{Path(path).name}")
                temporary.parent.mkdir(parents=True, exist_ok=True)
                write_file_durably(temporary, data)
                os.replace(temporary, path)
                fsync_directory(temporary.parent)
            else:
                self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                with self.fs.open_output_stream(path) as stream:
                    stream.write(data)
        except (OSError, pa.ArrowException) as error:
            raise CheckpointError(f"checkpoint store: cannot write {path!r}: {error}") from error

    def _numbers(self) -> list[int]:
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return sorted(
            int(match.group(1))
            for info in self.fs.get_file_info(selector)
            if (match := _NAME.fullmatch(info.base_name)) and info.type == pafs.FileType.Directory
        )

    def _prune(self, newest: int) -> None:
        for number in self._numbers():
            if number <= newest - _KEEP:
                self.fs.delete_dir(self.directory(number))
