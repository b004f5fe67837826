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

PEER = "users"  # the scenario's link joins a server to its users
SIM_TIME = "perllm_twin_simulated_seconds"  # gauge: the twin's simulated clock
UNPLACEABLE = "perllm_twin_unplaceable_requests_total"  # pods on nodes that cannot serve
# requests drawn per service; every fleet gets each one, so arrivals − completions is a
# fleet's backlog (an overloaded counterfactual shows it here, not yet in its energy)
ARRIVALS = "perllm_twin_arrivals_total"  # labels namespace, service


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
        tw = self.twin
        now = tw.now
        out: list[Metric] = []
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
        out += [bw, rtt, power, energy, cpu_w, cpu_j]

        pod_labels = [names.NAMESPACE, names.POD, names.MODEL_NAME]
        running = GaugeMetricFamily(names.VLLM_RUNNING, "Requests running.", labels=pod_labels)
        waiting = GaugeMetricFamily(names.VLLM_WAITING, "Requests waiting.", labels=pod_labels)
        hist = HistogramMetricFamily(
            names.VLLM_E2E_LATENCY,
            "End-to-end request latency (s): the processing time D of the world model.",
            labels=pod_labels,
        )
        success = CounterMetricFamily(
            names.VLLM_SUCCESS.removesuffix("_total"),
            "Finished requests.",
            labels=pod_labels,
        )
        prompt = CounterMetricFamily(
            names.VLLM_PROMPT_TOKENS.removesuffix("_total"),
            "Prompt tokens processed.",
            labels=pod_labels,
        )
        gen = CounterMetricFamily(
            names.VLLM_GENERATION_TOKENS.removesuffix("_total"),
            "Tokens generated.",
            labels=pod_labels,
        )
        for (ns, pod), st in sorted(tw.pods.items()):
            lv = [ns, pod, st.model]
            r, w = st.load(now)
            running.add_metric(lv, r)
            waiting.add_metric(lv, w)
            bounds = [names.fmt_le(b) for b in names.VLLM_LATENCY_BUCKETS]
            buckets = list(zip(bounds, [float(x) for x in st.buckets], strict=True))
            buckets.append(("+Inf", float(st.count)))
            hist.add_metric(lv, buckets, st.latency_sum)
            success.add_metric(lv, st.success)
            prompt.add_metric(lv, st.prompt_tokens)
            gen.add_metric(lv, st.generation_tokens)
        out += [running, waiting, hist, success, prompt, gen]

        svc_labels = [names.NAMESPACE, names.SERVICE]
        s_energy = CounterMetricFamily(
            names.SERVICE_ENERGY_J.removesuffix("_total"),
            "Energy attributed to the service's requests (J, scenario weights).",
            labels=svc_labels,
        )
        s_req = CounterMetricFamily(
            names.SERVICE_REQUESTS.removesuffix("_total"),
            "Completed requests of the service.",
            labels=svc_labels,
        )
        s_met = CounterMetricFamily(
            names.SERVICE_DEADLINE_MET.removesuffix("_total"),
            "Completed requests that met their deadline and quality floor.",
            labels=svc_labels,
        )
        for (ns, name), c in sorted(tw.stats[ACTUAL].items()):
            s_energy.add_metric([ns, name], c.energy_j)
            s_req.add_metric([ns, name], c.requests)
            s_met.add_metric([ns, name], c.met)
        out += [s_energy, s_req, s_met]

        cf_labels = [names.POLICY, names.NAMESPACE, names.SERVICE]
        c_energy = CounterMetricFamily(
            names.COUNTERFACTUAL_ENERGY_J.removesuffix("_total"),
            "Energy the policy would have spent on the same requests (J).",
            labels=cf_labels,
        )
        c_req = CounterMetricFamily(
            names.COUNTERFACTUAL_REQUESTS.removesuffix("_total"),
            "Requests the policy completed.",
            labels=cf_labels,
        )
        c_met = CounterMetricFamily(
            names.COUNTERFACTUAL_DEADLINE_MET.removesuffix("_total"),
            "Requests the policy completed within deadline and quality floor.",
            labels=cf_labels,
        )
        for policy in tw.policies:
            for (ns, name), c in sorted(tw.stats[policy].items()):
                c_energy.add_metric([policy, ns, name], c.energy_j)
                c_req.add_metric([policy, ns, name], c.requests)
                c_met.add_metric([policy, ns, name], c.met)
        out += [c_energy, c_req, c_met]

        sim = GaugeMetricFamily(SIM_TIME, "Simulated time of the twin (s).")
        sim.add_metric([], now)
        unpl = CounterMetricFamily(
            UNPLACEABLE.removesuffix("_total"),
            "Requests routed to a pod whose node cannot run the service.",
        )
        unpl.add_metric([], tw.unplaceable)
        arr = CounterMetricFamily(
            ARRIVALS.removesuffix("_total"),
            "Requests drawn for the service (the same requests go to every fleet).",
            labels=svc_labels,
        )
        for (ns, name), n in sorted(tw.arrivals.items()):
            arr.add_metric([ns, name], n)
        out += [sim, unpl, arr]
        return out


def registry_for(twin: Twin, lock: threading.Lock) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TwinCollector(twin, lock))
    return reg
