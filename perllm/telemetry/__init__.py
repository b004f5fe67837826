"""Telemetry shared by the extender, the operator, the node agent and the twin.

`names` is the metric contract (names, labels, units) and its general PromQL builders;
`queries` holds the scheduler extender's queries; `prom` reads Prometheus with timeouts and
a last-good cache, and parses answers by label (`Answer.by`, `by_pair`, `by_any`).
Producers (agent, twin) and consumers (extender, operator) import the same names, so they
cannot drift apart.
"""
