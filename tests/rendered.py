"""What the operator renders for manifests/chat-assistant.yaml before any placement, checked
alike on the renderer's output (tests/unit) and on the child the API server holds (tests/e2e)."""

from __future__ import annotations

import json
from typing import Any


def assert_open_chat_assistant_predictor(p: dict[str, Any]) -> None:
    """The InferenceService predictor of chat-assistant while no tier is decided."""
    assert p["schedulerName"] == "perllm-scheduler"
    assert p["minReplicas"] == 1
    assert p["labels"] == {"perllm.io/service": "chat-assistant"}
    assert p["annotations"]["perllm.io/deadline-s"] == "1"
    assert p["annotations"]["perllm.io/deadline-per-token-s"] == "0.15"
    expr = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    # No tier decided yet: open to every allowed tier, with the variant both can host
    # (the CPU-only edge one) and the GPU toleration so that the cloud node is a candidate.
    assert expr == {"key": "perllm.io/tier", "operator": "In", "values": ["edge", "cloud"]}
    assert p["annotations"]["perllm.io/variant-tier"] == "edge"
    # The open template runs the edge variant: its GGUF weights on llama.cpp.
    m = p["model"]
    assert m["modelFormat"]["name"] == "gguf"
    assert m["runtime"] == "perllm-llamacpp"
    assert m["storageUri"].endswith("Q4_K_M.gguf")
    assert "nvidia.com/gpu" not in json.dumps(m["resources"])
    assert p["tolerations"][0]["key"] == "nvidia.com/gpu"
