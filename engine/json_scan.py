"""A schema's columns read from a batch of JSON values by the native scanner, in one pass.

`engine/native/scan.c` parses every value strictly, straight into Arrow buffers; this module
gives it the schema as a flat plan and wraps the buffers it returns as Arrow arrays, without
copying them. A value the scanner is not sure of (see the C file) comes back as a row of
nulls with `read` false, for the codec's per-record path to judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine import _native
from engine.batch import value_buffers
from engine.schema import Node, Schema, fixed_width_classes

# The scanner's node kinds (the enum at the top of engine/native/scan.c).
_STR, _INT, _FLOAT, _NUMBER, _BOOL, _STRUCT, _LIST = range(7)
_KINDS = {"str": _STR, "datetime": _STR, "int": _INT, "float": _FLOAT, "number": _NUMBER}
_KINDS |= {"bool": _BOOL, "struct": _STRUCT, "list": _LIST}
_EMPTY = pa.py_buffer(b"")


@dataclass(frozen=True)
class _Entry:
    kind: int
    arrow_type: pa.DataType
    children: tuple[int, ...]


class JsonScanner:
    """Reads JSON object values into the columns of `schema` (date-times as their text)."""

    def __init__(self, schema: Schema) -> None:
        self._plan: list[tuple[int, bytes, bool, int, tuple, bytes]] = [
            (_STRUCT, b"", True, -1, (), b"")
        ]
        self._entries: list[_Entry] = [_Entry(_STRUCT, pa.null(), ())]
        self._names = [node.name for node in schema.fields]
        self._columns = tuple(self._add(node, 0) for node in schema.fields)
        self._entries[0] = _Entry(_STRUCT, pa.null(), self._columns)

    def _add(self, node: Node, parent: int) -> int:
        """Append `node` and its descendants to the plan (pre-order); its plan index."""
        index = len(self._plan)
        kind = _KINDS.get(node.kind)
        choices: tuple[bytes | int, ...] = ()
        if node.kind == "literal":
            kind = _STR if isinstance(node.choices[0], str) else _INT
            choices = tuple(c.encode() if isinstance(c, str) else c for c in node.choices)
        assert kind is not None, node.kind
        classes = fixed_width_classes(node.pattern) if node.pattern and kind == _STR else None
        pattern = b"".join(classes) if classes else b""
        self._plan.append((kind, node.name.encode(), node.required, parent, choices, pattern))
        self._entries.append(_Entry(kind, pa.null(), ()))
        nested = node.children if kind == _STRUCT else (node.item,) if kind == _LIST else ()
        children = tuple(self._add(child, index) for child in nested if child is not None)
        if kind == _STRUCT:
            names = [child.name for child in node.children]
            arrow_type = pa.struct(
                [
                    (name, self._entries[i].arrow_type)
                    for name, i in zip(names, children, strict=True)
                ]
            )
        elif kind == _LIST:
            arrow_type = pa.large_list(self._entries[children[0]].arrow_type)
        else:
            arrow_type = _SCALAR_TYPES[kind]
        self._entries[index] = _Entry(kind, arrow_type, children)
        return index

    def scan(self, values: pa.LargeBinaryArray) -> tuple[pa.RecordBatch, np.ndarray]:
        """The schema's columns for `values`, and per value whether it was read."""
        offsets, data = value_buffers(values)
        read, nodes = _native.scan(self._plan, data, offsets)
        arrays = [self._array(index, nodes) for index in self._columns]
        return (
            pa.RecordBatch.from_arrays(arrays, names=self._names),
            np.frombuffer(read, np.bool_),
        )

    def _array(self, index: int, nodes: list[tuple]) -> pa.Array:
        entry = self._entries[index]
        count, nulls, valid, offsets, values = nodes[index]
        validity = _bitmap(valid) if nulls else None
        children = [self._array(child, nodes) for child in entry.children]
        if entry.kind == _STRUCT:
            return pa.Array.from_buffers(
                entry.arrow_type, count, [validity], null_count=nulls, children=children
            )
        if entry.kind == _LIST:
            return pa.Array.from_buffers(
                entry.arrow_type, count, [validity, arrow_buffer(offsets)], nulls, children=children
            )
        if entry.kind == _BOOL:
            return pa.Array.from_buffers(
                entry.arrow_type, count, [validity, _bitmap(values)], nulls
            )
        if entry.kind == _STR:  # views (`offsets`) into one data buffer (`values`)
            return pa.Array.from_buffers(
                entry.arrow_type,
                count,
                [validity, arrow_buffer(offsets), arrow_buffer(values)],
                nulls,
            )
        return pa.Array.from_buffers(
            entry.arrow_type, count, [validity, arrow_buffer(values)], nulls
        )


_SCALAR_TYPES = {
    _STR: pa.string_view(),
    _INT: pa.int64(),
    _FLOAT: pa.float64(),
    _NUMBER: pa.float64(),
    _BOOL: pa.bool_(),
}


def arrow_buffer(buffer: tuple[int, int, object] | None) -> pa.Buffer:
    """A buffer of engine._native as an Arrow buffer, without a copy; it keeps the memory's
    owner alive."""
    if buffer is None:
        return _EMPTY
    address, size, owner = buffer
    return pa.foreign_buffer(address, size, base=owner)


def _bitmap(buffer: tuple[int, int, object] | None) -> pa.Buffer:
    """One byte per element (0 or 1) packed into an Arrow bitmap."""
    if buffer is None:
        return _EMPTY
    address, size, owner = buffer
    as_bytes = np.frombuffer(pa.foreign_buffer(address, size, base=owner), np.uint8)
    return pa.py_buffer(np.packbits(as_bytes, bitorder="little"))
