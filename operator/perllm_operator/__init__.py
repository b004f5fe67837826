"""The PerLLM kopf operator: reconciles `LLMService` objects into a KServe
`InferenceService` or a Deployment + Service. Run it with `perllm operator` or
`python -m perllm_operator`; embed it with `registry.build(config)` and `kopf.run`."""
