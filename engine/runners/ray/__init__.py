"""The Ray runner: a plan on Ray actors (`RayRunner`), and `scale` for a running one."""

from engine.runners.ray.control import scale
from engine.runners.ray.runner import RayRunner

__all__ = ["RayRunner", "scale"]
