"""Pipelines shipped with Conflux: W1, the reference workload, and examples."""
