"""Conflux: a columnar, Ray-based message processing engine for integration pipelines.

One import gives a pipeline author what they need::

    from engine import Pipeline
"""

from __future__ import annotations

from engine.pipeline import Pipeline
from engine.spec import PipelineSpec, load_spec

__all__ = ["Pipeline", "PipelineSpec", "load_spec"]
