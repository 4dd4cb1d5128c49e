"""Every scenario `python -m benchmarks` knows, in run order, and the load tool each needs."""
from __future__ import annotations

from typing import Callable

from benchmarks.h2_scenarios import H2_SCENARIOS
from benchmarks.load_scenarios import FIXED_RATE_SCENARIOS, LOAD_SCENARIOS
from benchmarks.runner import Options
from benchmarks.scenarios import SCENARIOS as MESH_SCENARIOS

SCENARIOS: dict[str, Callable[[Options], dict]] = {**MESH_SCENARIOS, **H2_SCENARIOS, **LOAD_SCENARIOS}
# the load generator a scenario drives; a scenario whose tool is missing is skipped
LOAD_TOOL = {name: "h2load" if name in FIXED_RATE_SCENARIOS or name in H2_SCENARIOS else "wrk"
             for name in SCENARIOS}
