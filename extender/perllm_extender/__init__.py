"""PerLLM kube-scheduler extender: CS-UCB over a pod's candidate nodes (issue #5)."""

from perllm_extender.app import ExtenderConfig, create_app

__all__ = ["ExtenderConfig", "create_app"]
