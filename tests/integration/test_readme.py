"""The README's Python tour runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def test_python_tour_runs_and_routes_the_paid_order() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2, "the tour has a schema block and a pipeline block"
    namespace: dict = {}
    for block in blocks:
        # dont_inherit: run as a user would, without this module's __future__ import
        exec(compile(block, str(README), "exec", dont_inherit=True), namespace)
    assert namespace["paid"].records() == [
        {"id": "o-1", "customer": "c1", "amount": 9.5, "status": "paid", "cents": 950}
    ]
    assert namespace["rejected"].records() == []
