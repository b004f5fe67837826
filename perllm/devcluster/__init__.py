"""A real Kubernetes control plane on the development machine (no container engine).

etcd, kube-apiserver, kube-controller-manager, two kube-schedulers (the default one and
`perllm-scheduler` with the PerLLM extender), the KWOK controller with fake edge/cloud nodes
from a scenario file, and Prometheus: all on loopback, built from pinned Go modules by
`tools/build-binaries.sh` into a version-keyed cache (docs/development.md).
"""

from perllm.devcluster.binaries import Binaries, BinariesMissing
from perllm.devcluster.cluster import Cluster, ClusterConfig

__all__ = ["Binaries", "BinariesMissing", "Cluster", "ClusterConfig"]
