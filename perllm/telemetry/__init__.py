"""Telemetry shared by the extender, the operator, the node agent and the twin.

`names` is the metric contract (names, labels, units); `prom` reads Prometheus with
timeouts and a last-good cache. Producers (agent, twin) and consumers (extender,
operator) import the same names, so they cannot drift apart.
"""
