"""Enrich: add columns from a reference table (Parquet or CSV) joined on key fields."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import msgspec
import polars as pl

from engine.errors import ConfigError
from engine.operators.base import DEAD_LETTER, MAIN, Outputs, Step, require_fields
from engine.operators.deadletter import reject

_MATCHED = "_enrich_matched"
_FORMATS = (".parquet", ".csv")


class EnrichState:
    """The loaded reference table, when it was loaded and the file's mtime then.

    The table is the state (not a module global) so each step instance, and each runner
    worker, holds its own copy, and a checkpoint restores the table the run was using.
    """

    def __init__(self) -> None:
        self.table: pl.DataFrame | None = None
        self.loaded_at = 0.0  # time.monotonic() of the last load or freshness check
        self.mtime: float | None = None  # the file's mtime when loaded; None: unknown

    def snapshot(self) -> pl.DataFrame:
        """The table in use (empty before the first batch)."""
        return self.table if self.table is not None else pl.DataFrame()

    def restore(self, table: pl.DataFrame) -> None:
        """Use `table` again; with `refresh_seconds`, the next freshness check re-reads the
        file (its mtime at snapshot time is not kept)."""
        self.table = table if table.width else None
        self.loaded_at = time.monotonic()
        self.mtime = None


class Enrich(Step, frozen=True, tag="enrich"):
    """Left-join each row with the reference table row whose `table_on` equals its `on`.

    Rows keep their order and every column, envelope included; the table's `columns` are
    added after them. A row without a match keeps nulls in the added columns, or, when
    `required`, goes to the dead letters with the reason "no <table> row for <on>=<value>".

    Guarantees: one output row per input row (main or dead letter): the table must have
    at most one row per key, which loading checks. The file is read at the first batch and,
    with `refresh_seconds`, again when that long has passed and its mtime changed, so rows
    see either the old table or the new one, never a mix within a batch (a file missing at
    that moment keeps the old table; replace the file by renaming a complete one over it).
    Table rows with a null key are dropped: they can never match.

    Costs: the whole table in memory (in the state, so once per worker); a hash join per
    batch, O(batch + table). A refresh re-reads the file on the calling thread.

    Args:
        table: path of a `.parquet` or `.csv` file (the suffix chooses the reader).
        on: the batch's key fields (top-level).
        table_on: the table's key columns, in the order of `on`; default the same names.
        columns: the table columns to add; default all that are not keys.
        refresh_seconds: how old the loaded table may get before its file is checked for
            changes; None loads it once.
        required: send rows without a match to the dead letters instead of keeping them.

    Raises ConfigError naming the step and file, from `check` or at the first batch, when
    the file is missing, lacks a named column, holds a key twice, or adds a column the
    batch already has (rename one of them first: overwriting a field silently is the usual
    mistake this prevents); ValueError (a ValidationError from YAML) for another suffix.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "devices.csv"
    >>> _ = path.write_text("device,site\\nd1,north\\nd2,south\\n")
    >>> step = Enrich(table=str(path), on=("device",))
    >>> batch = pl.DataFrame({"device": ["d2", "d9", "d1"], "value": [1, 2, 3]})
    >>> step.process(batch, step.new_state())["main"].rows()
    [('d2', 1, 'south'), ('d9', 2, None), ('d1', 3, 'north')]
    >>> strict = Enrich(table=str(path), on=("device",), required=True)
    >>> strict.process(batch, strict.new_state())["dead_letter"]["_reason"].to_list()
    ... # doctest: +ELLIPSIS
    ['no .../devices.csv row for device=d9']
    """

    table: str
    on: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    table_on: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    refresh_seconds: Annotated[float, msgspec.Meta(ge=0)] | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if Path(self.table).suffix.lower() not in _FORMATS:
            raise ValueError(f"expected a .parquet or .csv file, got {self.table!r}")
        if self.table_on is not None and len(self.table_on) != len(self.on):
            raise ValueError(
                f"expected as many table_on columns as on fields ({len(self.on)}), "
                f"got {len(self.table_on)}"
            )

    @property
    def table_keys(self) -> tuple[str, ...]:
        """The table's key columns."""
        return self.table_on if self.table_on is not None else self.on

    def check(self, fields: set[str] | None) -> None:
        require_fields(self, self.on, fields)
        added = self._added(self._read_schema())
        if fields is not None:
            self._refuse_collisions(added, fields)

    def new_state(self) -> EnrichState:
        return EnrichState()

    def load(self, state: EnrichState) -> pl.DataFrame:
        """Read the table into `state` and return it, checking its columns and keys."""
        path = self._existing_path()
        reader = pl.read_parquet if path.suffix.lower() == ".parquet" else pl.read_csv
        mtime = path.stat().st_mtime
        frame = reader(path)
        added = self._added(frame.schema)
        self._refuse_collisions(added, set(self.on))
        table = frame.select(*self.table_keys, *added).drop_nulls(self.table_keys)
        repeated = table.filter(pl.struct(self.table_keys).is_duplicated())
        if not repeated.is_empty():
            raise ConfigError(
                f"step {self.name!r} ({self.op}): table {self.table!r} has {repeated.height} "
                f"rows sharing a key, e.g. {repeated.row(0, named=True)}; expected one row "
                f"per {', '.join(self.table_keys)}"
            )
        state.table = table.rename(dict(zip(self.table_keys, self.on, strict=True)))
        state.loaded_at, state.mtime = time.monotonic(), mtime
        return state.table

    def process(self, batch: pl.DataFrame, state: EnrichState) -> Outputs:
        table = self._table_for(batch, state)
        self._refuse_collisions([n for n in table.columns if n not in self.on], set(batch.columns))
        joined = batch.join(
            table.with_columns(pl.lit(True).alias(_MATCHED)),
            on=list(self.on),
            how="left",
            maintain_order="left",
        )
        matched = pl.col(_MATCHED).is_not_null()
        if not self.required:
            return {MAIN: joined.drop(_MATCHED)}
        return {
            MAIN: joined.filter(matched).drop(_MATCHED),
            DEAD_LETTER: reject(
                joined.filter(~matched), self._no_match_reason(), self.name or self.op
            ),
        }

    def _table_for(self, batch: pl.DataFrame, state: EnrichState) -> pl.DataFrame:
        """The table to join: loaded at the first batch, reloaded when stale and its file's
        mtime changed, its keys cast once to the batch's types (a CSV's inferred types)."""
        table = state.table if state.table is not None else self.load(state)
        now = time.monotonic()
        if self.refresh_seconds is not None and now - state.loaded_at >= self.refresh_seconds:
            state.loaded_at = now
            try:
                changed = os.stat(self.table).st_mtime != state.mtime
            except FileNotFoundError:  # being replaced: keep the table, check again later
                changed = False
            if changed:
                table = self.load(state)
        differing = {n: batch.schema[n] for n in self.on if table.schema[n] != batch.schema[n]}
        if differing:
            try:
                table = table.with_columns(pl.col(n).cast(t) for n, t in differing.items())
            except pl.exceptions.InvalidOperationError as error:
                raise ConfigError(
                    f"step {self.name!r} ({self.op}): table {self.table!r}: cannot compare "
                    f"its keys with fields {', '.join(differing)} of type "
                    f"{', '.join(map(str, differing.values()))}: {error}"
                ) from error
            state.table = table
        return table

    def _existing_path(self) -> Path:
        path = Path(self.table)
        if not path.is_file():
            raise ConfigError(
                f"step {self.name!r} ({self.op}): table file {self.table!r} does not exist"
            )
        return path

    def _read_schema(self) -> pl.Schema:
        path = self._existing_path()
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet_schema(path)
        return pl.scan_csv(path).collect_schema()

    def _added(self, schema: pl.Schema) -> list[str]:
        """The columns to add, after checking that every named column is in the table."""
        available = set(schema.names())
        for role, names in (("table_on", self.table_keys), ("columns", self.columns or ())):
            for name in names:
                if name not in available:
                    raise ConfigError(
                        f"step {self.name!r} ({self.op}): {role}: column {name!r} is not in "
                        f"table {self.table!r} (columns: {', '.join(schema.names())})"
                    )
        if self.columns is not None:
            return [name for name in self.columns if name not in self.table_keys]
        return [name for name in schema.names() if name not in self.table_keys]

    def _refuse_collisions(self, added: list[str], fields: set[str]) -> None:
        clashing = sorted(set(added) & fields)
        if clashing:
            raise ConfigError(
                f"step {self.name!r} ({self.op}): table {self.table!r} would add "
                f"{', '.join(map(repr, clashing))}, already in the input; expected new "
                "column names (list the ones to add in `columns`)"
            )

    def _no_match_reason(self) -> pl.Expr:
        values = [
            pl.concat_str(pl.lit(f"{name}="), pl.col(name).cast(pl.String).fill_null("null"))
            for name in self.on
        ]
        return pl.concat_str(
            pl.lit(f"no {self.table} row for "), pl.concat_str(values, separator=", ")
        )
