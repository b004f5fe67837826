"""PerLLM kube-scheduler extender: CS-UCB over a pod's candidate nodes."""

from perllm_extender.app import create_app
from perllm_extender.config import ExtenderConfig

__all__ = ["ExtenderConfig", "create_app"]
