"""The error hierarchy: every error Conflux raises on purpose is a `ConfluxError`.

Messages name the thing that was wrong (a config path, a step, a field), the value found and
what was expected, so that a user can fix the input without reading Conflux's source.
"""

from __future__ import annotations


class ConfluxError(Exception):
    """Base class of the errors Conflux raises on purpose."""


class ConfigError(ConfluxError, ValueError):
    """A pipeline definition (YAML or Python) is invalid; raised when it is loaded or built.

    A ValueError too, so that msgspec adds the field path when a step fails to load.
    """


class SchemaError(ConfluxError):
    """A message schema cannot be mapped to Arrow, or a step refers to a field it lacks."""


class ConnectorError(ConfluxError):
    """A source or sink cannot reach, read or write its system."""


class CheckpointError(ConfluxError):
    """A checkpoint cannot be written, read, or applied to the pipeline being run."""
