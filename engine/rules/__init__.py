"""Plan rewrites, one rule per module, each `apply(plan) -> plan`."""
