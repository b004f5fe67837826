"""A scenario's servers as KWOK Node objects, so one file describes a simulation and a cluster."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

from perllm.devcluster.process import Proc, StartError
from perllm.labels import (  # noqa: F401 - re-exported names
    ANN_HARDWARE,
    ANN_HARDWARE_SPEC,
    ANN_LINK_BANDWIDTH,
    ANN_LINK_ENERGY,
    ANN_LINK_NOISE,
    ANN_LINK_RTT,
    DOMAIN,
    GPU_RESOURCE,
    LABEL_HARDWARE,
    LABEL_TIER,
    MAX_LABEL_VALUE,
    number_text,
)
from perllm.scenario import Scenario

# KWOK manages exactly the nodes carrying this annotation (--manage-nodes-with-annotation-selector).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_SELECTOR = f"{KWOK_ANNOTATION}=fake"
PODS_PER_NODE = 110  # without `pods` in allocatable nothing schedules ("Too many pods")


def _num(x: float) -> str:
    return number_text(x)  # (what the extender reads back exactly: perllm.labels)


def node_manifests(scenario: Scenario) -> list[dict[str, Any]]:
    """One Node per server (with `count` expanded), capacity from the hardware catalogue.

    `perf_scale` is deliberately absent: it is the world's hidden truth, which the scheduler
    must learn, not read.
    """
    hardware = scenario.catalogue.hardware
    out: list[dict[str, Any]] = []
    for name, server in scenario.expanded_servers():
        hw = hardware[server.hardware]
        capacity = {
            "cpu": str(hw.cpu_cores),
            "memory": f"{math.floor(hw.memory_gib * 1024)}Mi",
            "pods": str(PODS_PER_NODE),
            "ephemeral-storage": "100Gi",
        }
        if hw.gpus > 0:
            capacity[GPU_RESOURCE] = str(hw.gpus)
        link = server.link
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            LABEL_TIER: server.tier.value,
            LABEL_HARDWARE: server.hardware,
        }
        if hw.gpu_model:
            labels["nvidia.com/gpu.product"] = _label_value(hw.gpu_model)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {
                        KWOK_ANNOTATION: "fake",
                        ANN_HARDWARE: server.hardware,
                        ANN_HARDWARE_SPEC: json.dumps(
                            hw.model_dump(mode="json", exclude_none=True, exclude={"source"}),
                            sort_keys=True,
                        ),
                        ANN_LINK_BANDWIDTH: _num(link.bandwidth_mbps),
                        ANN_LINK_NOISE: _num(link.noise),
                        ANN_LINK_RTT: _num(link.rtt_ms),
                        ANN_LINK_ENERGY: _num(link.energy_uj_per_bit),
                    },
                },
                # No kwok taint: tests schedule onto these nodes like onto real ones.
                "spec": {},
                # Status in the create body is kept, as at kubelet registration.
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            }
        )
    return out


def _label_value(s: str) -> str:
    """A valid label value: alphanumerics, '-', '_', '.', at most 63 characters."""
    v = "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-_.")
    return v[:MAX_LABEL_VALUE].rstrip("-_.")


# Each node's name and Ready status, one a line (`wait_ready`).
_READY = (
    '{range .items[*]}{.metadata.name}{"\\t"}'
    '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
)


def wait_ready(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    names: list[str],
    timeout: float,
    kwok: Proc | None = None,
) -> None:
    """Poll one node list (`kubectl`: a cluster's) until every one of `names` is Ready, or
    raise `StartError` naming the first nodes that are not, with `kwok`'s log tail.
    (`kubectl wait` on the nodes waits for one after another, ~0.2 s each: with the
    1,000 of large-fleet it ran out of time with every node long Ready.)"""
    deadline = time.monotonic() + timeout
    not_ready = set(names)
    while True:
        left = deadline - time.monotonic()
        r = kubectl("get", "nodes", "-o", f"jsonpath={_READY}", check=False, timeout=max(left, 5))
        if r.returncode == 0:
            ready = {
                name
                for name, _, status in (ln.partition("\t") for ln in r.stdout.splitlines())
                if status == "True"
            }
            not_ready -= ready
            if not not_ready:
                return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    first = ", ".join(sorted(not_ready)[:5]) + (", ..." if len(not_ready) > 5 else "")
    why = f" ({r.stderr.strip()})" if r.returncode != 0 else ""
    raise StartError(
        f"{len(not_ready)} of {len(names)} nodes not Ready after {timeout:.0f}s: "
        f"{first}{why}" + (f"\nkwok log {kwok.log}:\n{kwok.tail()}" if kwok else "")
    )
