"""The command lines of the local control plane's components (`Cluster` starts them).

Every component listens on loopback only; ports come from `process.free_ports`.
"""

from __future__ import annotations

from pathlib import Path

from perllm.devcluster.certs import ApiServerTls

KWOK_CIDR = "10.0.0.0/16"  # disjoint from the service range below; default /24 holds ~254 pods
SERVICE_CIDR = "10.96.0.0/16"
# What Deployments, ReplicaSets, DaemonSets (the chart's node agent), PodDisruptionBudgets,
# deletion and namespaces need, plus the aggregation that fills the built-in
# admin/edit/view ClusterRoles (without it `view` grants nothing).
CONTROLLERS = (
    "deployment-controller,replicaset-controller,daemonset-controller,"
    "disruption-controller,garbage-collector-controller,"
    "namespace-controller,clusterrole-aggregation-controller"
)

Argv = list[str | Path]


def etcd(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> Argv:
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--name=perllm-dev",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=perllm-dev={peer}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
        "--listen-metrics-urls=",
    ]


def apiserver(binary: Path, etcd_url: str, port: int, run_dir: Path, sa_key: Path) -> Argv:
    tls = ApiServerTls.under(run_dir / "pki")
    return [
        binary,
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        # Required: with no default route the apiserver finds no address and exits.
        "--advertise-address=127.0.0.1",
        f"--cert-dir={run_dir / 'pki'}",
        # Signed by the CA the kubeconfigs carry (`certs.apiserver_tls`), not self-signed.
        f"--tls-cert-file={tls.cert}",
        f"--tls-private-key-file={tls.key}",
        f"--token-auth-file={run_dir / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No service-account controller runs, so nothing creates `default` SAs; and no
        # node-lifecycle controller lifts the not-ready taint TaintNodesByCondition puts
        # on every new node (KWOK sends no heartbeats here).
        "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "-v=1",
    ]


def controller_manager(binary: Path, kubeconfig: Path, port: int) -> Argv:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--controllers={CONTROLLERS}",
        "--profiling=false",
        "-v=1",
    ]


def scheduler(binary: Path, config: Path, port: int, cert_dir: Path) -> Argv:
    return [
        binary,
        f"--config={config}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "-v=2",
    ]


def kwok(
    binary: Path,
    kubeconfig: Path,
    stages: Path,
    selector: str,
    port: int,
    lease_seconds: int,
    cidr: str = KWOK_CIDR,
) -> Argv:
    """`cidr`: where pod IPs come from (a 127.0.0.0/8 range makes pods addressable by
    processes on this machine: tests/e2e/test_chart_scrape.py)."""
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        f"--manage-nodes-with-annotation-selector={selector}",
        f"--cidr={cidr}",
        "--node-ip=127.0.0.1",
        f"--node-lease-duration-seconds={lease_seconds}",
        f"--server-address=127.0.0.1:{port}",
    ]


def prometheus(binary: Path, config: Path, data_dir: Path, port: int) -> Argv:
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=2h",
        "--log.level=warn",
    ]
