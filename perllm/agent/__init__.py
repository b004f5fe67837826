"""The PerLLM node agent (`perllm agent`): GPU and CPU power and the measured path bandwidth.

It fills the gaps a cluster may have (no DCGM exporter, CPU-only edge servers, no view of
the edge<->cloud path) under the names of perllm/telemetry/names.py. See docs/agent.md.
"""

from perllm.agent.agent import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig"]
