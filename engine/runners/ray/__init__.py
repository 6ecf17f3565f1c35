"""The Ray runner: a plan on Ray actors (`RayRunner`), and `scale` for a running one.

The names load on first use (PEP 562), so that an actor importing one module of this
package (the control actor) does not import the whole engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.runners.ray.control import scale
    from engine.runners.ray.runner import RayRunner

__all__ = ["RayRunner", "scale"]

_HOMES = {"RayRunner": "engine.runners.ray.runner", "scale": "engine.runners.ray.control"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'engine.runners.ray' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
