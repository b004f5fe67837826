"""`perllm demo`: the whole closed loop on a laptop without GPUs.

A local control plane with the scenario's servers as KWOK nodes, Prometheus, the twin
(world model serving the metrics), the extender and the operator as processes; the
LLMServices applied; a live view of placements, deadline attainment and joules per request
against the twin's counterfactual baselines; a summary table, JSON and a PNG at the end.
"""
