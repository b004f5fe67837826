"""The PerLLM kopf operator: reconciles `LLMService` objects into a KServe
`InferenceService` or a Deployment + Service (issue #4). Run it with `perllm operator` or
`python -m perllm_operator`."""

from __future__ import annotations

HANDLERS_MODULE = "perllm_operator.handlers"
