"""The twin's Prometheus exposition: the exact names, labels and units of
`perllm.telemetry.names` (DCGM W/mJ, RAPL-style W/J, vLLM histograms, PerLLM series).

A custom collector renders the twin's state at scrape time, so series of deleted pods
vanish with them and every scrape is consistent (taken under the twin's lock).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from perllm.telemetry import names
from perllm.twin.engine import ACTUAL, Twin
from perllm.twin.records import Counts

PEER = "users"  # the scenario's link joins a server to its users
SIM_TIME = "perllm_twin_simulated_seconds"  # gauge: the twin's simulated clock
UNPLACEABLE = "perllm_twin_unplaceable_requests_total"  # pods on nodes that cannot serve
# requests drawn per service; every fleet gets each one, so arrivals − completions is a
# fleet's backlog (an overloaded counterfactual shows it here, not yet in its energy)
ARRIVALS = "perllm_twin_arrivals_total"  # labels namespace, service
# requests over the twin's per-slot cap (never drawn, never simulated); labels as ARRIVALS
DROPPED = "perllm_twin_dropped_requests_total"
BEHIND = "perllm_twin_behind_seconds"  # gauge: wall-clock target minus simulated time


def _uuid(node: str) -> str:
    h = hashlib.sha1(node.encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class TwinCollector(Collector):
    def __init__(self, twin: Twin, lock: threading.Lock) -> None:
        self.twin = twin
        self.lock = lock

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            yield from self._families()

    def _families(self) -> list[Metric]:
        return [
            *self._nodes(),
            *self._pods(),
            *_counts(_fleet_counts(self.twin, ACTUAL), _SERVICE_COUNTS, []),
            *_counts(
                [((p, *k), c) for p in self.twin.policies for k, c in _fleet_counts(self.twin, p)],
                _COUNTERFACTUAL_COUNTS,
                [names.POLICY],
            ),
            *self._clock(),
        ]

    def _nodes(self) -> list[Metric]:
        """Path bandwidth and RTT per node; DCGM series for GPU nodes, RAPL-style for CPUs."""
        tw = self.twin
        bw = GaugeMetricFamily(
            names.PATH_BANDWIDTH_BPS,
            "Path bandwidth between the node and its users (bit/s), scenario dynamics.",
            labels=[names.NODE, "peer"],
        )
        rtt = GaugeMetricFamily(
            names.PATH_RTT_S, "Path round-trip time (s).", labels=[names.NODE, "peer"]
        )
        dcgm_labels = ["gpu", "UUID", "device", "modelName", "Hostname"]
        power = GaugeMetricFamily(
            names.DCGM_POWER_W, "GPU power draw (W), simulated.", labels=dcgm_labels
        )
        # DCGM's counter has no `_total`: built as a gauge, TYPE corrected in exposition().
        energy = GaugeMetricFamily(
            names.DCGM_ENERGY_MJ,
            "GPU energy since start (mJ), simulated.",
            labels=dcgm_labels,
        )
        cpu_w = GaugeMetricFamily(
            names.CPU_POWER_W, "CPU package power (W), simulated.", labels=[names.NODE, "package"]
        )
        cpu_j = CounterMetricFamily(
            names.CPU_ENERGY_J,
            "CPU package energy (J), simulated.",
            labels=[names.NODE, "package"],
        )
        for j, node in enumerate(tw.node_names):
            srv = tw.server_list[j][1]
            bw.add_metric([node, PEER], float(tw.bw_mbps[j]) * 1e6)
            rtt.add_metric([node, PEER], srv.link.rtt_ms / 1000)
            if tw.is_gpu[j]:
                hw = tw.hardware[srv.hardware]
                model = hw.gpu_model or hw.display
                labels = ["0", _uuid(node), "nvidia0", model, node]
                power.add_metric(labels, tw.node_power_w[j])
                energy.add_metric(labels, tw.node_energy_j[j] * 1000.0)
            else:
                cpu_w.add_metric([node, "0"], tw.node_power_w[j])
                cpu_j.add_metric([node, "0"], tw.node_energy_j[j])
        return [bw, rtt, power, energy, cpu_w, cpu_j]

    def _pods(self) -> list[Metric]:
        """What each model-server pod's vLLM would export."""
        # One engine a pod (vLLM V1's index 0).
        pod_labels = [names.NAMESPACE, names.POD, names.MODEL_NAME, names.ENGINE]
        running = GaugeMetricFamily(names.VLLM_RUNNING, "Requests running.", labels=pod_labels)
        waiting = GaugeMetricFamily(names.VLLM_WAITING, "Requests waiting.", labels=pod_labels)
        hist = HistogramMetricFamily(
            names.VLLM_E2E_LATENCY,
            "End-to-end request latency (s): the processing time D of the world model.",
            labels=pod_labels,
        )
        prompt, gen = (
            CounterMetricFamily(name.removesuffix("_total"), doc, labels=pod_labels)
            for name, doc in (
                (names.VLLM_PROMPT_TOKENS, "Prompt tokens processed."),
                (names.VLLM_GENERATION_TOKENS, "Tokens generated."),
            )
        )
        success = CounterMetricFamily(
            names.VLLM_SUCCESS.removesuffix("_total"),
            "Finished requests.",
            labels=[*pod_labels, names.FINISHED_REASON],
        )
        bounds = [names.fmt_le(b) for b in names.VLLM_LATENCY_BUCKETS]
        for (ns, pod), st in sorted(self.twin.pods.items()):
            lv = [ns, pod, st.model, "0"]
            r, w = st.load(self.twin.now)
            running.add_metric(lv, r)
            waiting.add_metric(lv, w)
            buckets = list(zip(bounds, [float(x) for x in st.buckets], strict=True))
            buckets.append(("+Inf", float(st.count)))
            hist.add_metric(lv, buckets, st.latency_sum)
            # The world model's requests end at their drawn length: an end-of-sequence.
            success.add_metric([*lv, "stop"], st.success)
            prompt.add_metric(lv, st.prompt_tokens)
            gen.add_metric(lv, st.generation_tokens)
        return [running, waiting, hist, success, prompt, gen]

    def _clock(self) -> list[Metric]:
        tw = self.twin
        sim = GaugeMetricFamily(SIM_TIME, "Simulated time of the twin (s).")
        sim.add_metric([], tw.now)
        unpl = CounterMetricFamily(
            UNPLACEABLE.removesuffix("_total"),
            "Requests routed to a pod whose node cannot run the service.",
        )
        unpl.add_metric([], tw.unplaceable)
        arr = CounterMetricFamily(
            ARRIVALS.removesuffix("_total"),
            "Requests drawn for the service (the same requests go to every fleet).",
            labels=[names.NAMESPACE, names.SERVICE],
        )
        for (ns, name), n in sorted(tw.arrivals.items()):
            arr.add_metric([ns, name], n)
        drop = CounterMetricFamily(
            DROPPED.removesuffix("_total"),
            f"Requests over the cap of {tw.max_requests_per_slot} per service and slot: "
            "not simulated.",
            labels=[names.NAMESPACE, names.SERVICE],
        )
        for (ns, name), n in sorted(tw.dropped.items()):
            drop.add_metric([ns, name], n)
        behind = GaugeMetricFamily(BEHIND, "Simulated seconds the twin is behind its clock.")
        behind.add_metric([], tw.behind_s)
        return [sim, unpl, arr, drop, behind]


# (metric, help) of the energy, requests and deadline-met counters: per service for the
# real placement, per (policy, service) for each counterfactual fleet.
_SERVICE_COUNTS = (
    (names.SERVICE_ENERGY_J, "Energy attributed to the service's requests (J, scenario weights)."),
    (names.SERVICE_REQUESTS, "Completed requests of the service."),
    (names.SERVICE_DEADLINE_MET, "Completed requests that met their deadline and quality floor."),
)
_COUNTERFACTUAL_COUNTS = (
    (names.COUNTERFACTUAL_ENERGY_J, "Energy the policy would have spent on the same requests (J)."),
    (names.COUNTERFACTUAL_REQUESTS, "Requests the policy completed."),
    (
        names.COUNTERFACTUAL_DEADLINE_MET,
        "Requests the policy completed within deadline and quality floor.",
    ),
)


Row = tuple[tuple[str, ...], Counts]


def _fleet_counts(tw: Twin, fleet: str) -> list[Row]:
    """A fleet's counts per (namespace, service), sorted."""
    return sorted(tw.stats[fleet].items())


def _counts(rows: list[Row], specs: tuple[tuple[str, str], ...], lead: list[str]) -> list[Metric]:
    """Energy, requests and deadline-met counters, one sample per row key."""
    labels = [*lead, names.NAMESPACE, names.SERVICE]
    fams = [CounterMetricFamily(n.removesuffix("_total"), doc, labels=labels) for n, doc in specs]
    for key, c in rows:
        for fam, value in zip(fams, (c.energy_j, c.requests, c.met), strict=True):
            fam.add_metric(list(key), value)
    return list(fams)


def registry_for(twin: Twin, lock: threading.Lock) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TwinCollector(twin, lock))
    return reg
