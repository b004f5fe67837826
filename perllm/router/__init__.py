"""`perllm router`: the fast timescale. An OpenAI-compatible HTTP endpoint in front of one
LLMService's replicas that places every request, edge or cloud, with the same CS-UCB as
the simulator (`perllm.csucb.CSUCB`), and learns from what it observes itself.

Modules: config (backends, service, limits), request (parsing, token and upload
estimates), decision (the thin CS-UCB layer), metrics (Prometheus), proxy (streaming
upstream calls), app (the ASGI application), cli (`perllm router`). See docs/router.md.
"""
