"""Kepler's series, as Kepler >= 0.10 exports them, through the harness' real Prometheus
and the PromQL the extender runs (`perllm.telemetry.queries`): a node's CPU package power
where the agent publishes none, and a CPU pod's package energy per request."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from perllm.devcluster.cluster import Cluster
from perllm.devcluster.exporter import TextExporter
from perllm.devcluster.kube import Kube, wait_for
from perllm.telemetry import names, queries

from .promql import prom_query

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
JOB = "e2e-kepler"
RAPL = "/sys/class/powercap/intel-rapl"


class Kepler(TextExporter):
    """Two nodes: `kepler-only` (two sockets, Kepler alone) and `both` (the agent's
    reading too); one model-server pod on `kepler-only` drawing 20 W of package energy
    (and 3 W of DRAM) while finishing 2 requests/s."""

    def __init__(self) -> None:
        self.t0 = time.time()
        super().__init__()

    def render(self) -> str:
        t = time.time() - self.t0
        k, kp, v = names.KEPLER_NODE_CPU_W, names.KEPLER_POD_CPU_J, names.VLLM_E2E_LATENCY
        pod = 'pod_name="chat-x",pod_namespace="team",pod_id="u1",state="running"'
        sel = 'namespace="team",pod="chat-x"'

        def node(n: str, zone: str, path: str, w: float) -> str:
            return f'{k}{{node_name="{n}",zone="{zone}",path="{RAPL}:{path}"}} {w:g}'

        return (
            "\n".join(
                [
                    f"# TYPE {k} gauge",
                    node("kepler-only", "package", "0", 12.5),
                    node("kepler-only", "package", "1", 17.5),
                    node("kepler-only", "dram", "0:0", 5),
                    node("both", "package", "0", 99),
                    f"# TYPE {names.CPU_POWER_W} gauge",
                    f'{names.CPU_POWER_W}{{node="both",package="0"}} 40',
                    f"# TYPE {kp} counter",
                    f'{kp}{{{pod},zone="package",node_name="kepler-only"}} {20 * t:.3f}',
                    f'{kp}{{{pod},zone="dram",node_name="kepler-only"}} {3 * t:.3f}',
                    f"# TYPE {v} histogram",
                    f"{v}_count{{{sel}}} {int(2 * t)}",
                    f"{v}_sum{{{sel}}} {t:.3f}",
                    f'{v}_bucket{{{sel},le="+Inf"}} {int(2 * t)}',
                ]
            )
            + "\n"
        )


@pytest.fixture
def prometheus(kube: Kube) -> Iterator[str]:
    cluster: Cluster | None = kube.local
    if cluster is None or cluster.prometheus_url is None:
        pytest.skip("needs the local control plane with Prometheus")
    ex = Kepler()
    cluster.set_scrape_configs([ex.scrape_config(JOB)])
    try:
        yield cluster.prometheus_url
    finally:
        cluster.set_scrape_configs(cluster.config.scrape_configs)
        ex.close()


def test_kepler_fills_in_cpu_power_and_a_cpu_pods_energy_per_request(prometheus: str) -> None:
    def power() -> dict[str, float]:
        res = prom_query(prometheus, queries.cpu_power_by_node())
        return {r["metric"][names.NODE]: float(r["value"][1]) for r in res}

    # the agent's reading wins where both exist; Kepler's package zone, summed over
    # sockets, elsewhere; DRAM is not package power
    assert wait_for(lambda: power() == {"kepler-only": 30.0, "both": 40.0}, "power", timeout=60)

    def per_request() -> dict[str, float]:
        res = prom_query(prometheus, queries.pod_cpu_energy_per_request("20s"))
        return {
            f"{r['metric']['namespace']}/{r['metric']['pod']}": float(r["value"][1]) for r in res
        }

    time.sleep(22)  # a full window of scrapes
    got = per_request()
    assert set(got) == {"team/chat-x"}, got
    assert got["team/chat-x"] == pytest.approx(10.0, rel=0.1)  # 20 W / 2 requests/s
