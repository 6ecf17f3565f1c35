"""Conflux: a columnar, Ray-based message processing engine for integration pipelines.

One import gives a pipeline author what they need::

    from engine import Pipeline

The names below load on first use (PEP 562): a process that needs only a small part of the
engine (a Ray actor that reports a pipeline's status) does not import all of it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.pipeline import Pipeline
    from engine.spec import PipelineSpec, load_spec

__all__ = ["Pipeline", "PipelineSpec", "load_spec"]

_HOMES = {"Pipeline": "engine.pipeline", "PipelineSpec": "engine.spec", "load_spec": "engine.spec"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
