"""Scenario files: one YAML describes a world (servers, links, workload, dynamics).

The simulator runs it and the local control plane turns its servers into KWOK nodes,
so a simulation and a test cluster come from the same file. Every field is documented
in docs/scenarios.md; validation errors name the field (`servers[0].link.bandwidth_mbps`).

Modules: `base` (error, strict base model), `dists` (distributions, Azure presets),
`workload` (classes, arrival processes), `model` (the `Scenario`), `load` (YAML files,
built-ins in perllm/scenarios/).
"""

from perllm.scenario.base import ScenarioError
from perllm.scenario.dists import AZURE_PRESETS, Choice, Dist
from perllm.scenario.load import (
    REFERENCE_SCENARIOS,
    builtin_dir,
    builtin_scenarios,
    check_unique_names,
    load_scenario,
    parse_scenario,
)
from perllm.scenario.model import Admission, Bandwidth, Scenario
from perllm.scenario.workload import (
    ArrivalKind,
    Arrivals,
    ClassArrivals,
    Process,
    ServiceClass,
    Window,
    Workload,
)

__all__ = [
    "AZURE_PRESETS",
    "REFERENCE_SCENARIOS",
    "Admission",
    "ArrivalKind",
    "Arrivals",
    "Bandwidth",
    "Choice",
    "ClassArrivals",
    "Dist",
    "Process",
    "Scenario",
    "ScenarioError",
    "ServiceClass",
    "Window",
    "Workload",
    "builtin_dir",
    "builtin_scenarios",
    "check_unique_names",
    "load_scenario",
    "parse_scenario",
]
