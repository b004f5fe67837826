"""LLMService manifests the e2e tests build (the examples under manifests/ aside)."""

from __future__ import annotations

from typing import Any


def llmservice(name: str, variants: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """An LLMService serving llama2-7b with `variants`; `spec` is the rest of its spec."""
    return {
        "apiVersion": "perllm.io/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {"model": {"name": "llama2-7b", "variants": variants}, **spec},
    }
