"""Who may make the extender act (docs/extender.md, "Security").

`PodVerifier`: a `/filter` or `/prioritize` request about a PerLLM pod is acted on only if
the pod exists as the request says: the pod informer (or, on a miss, the API server) knows
a pod of that namespace/name with the request's uid, the same `perllm.io/service` label and
`spec.schedulerName: perllm-scheduler`, not yet bound to a node. Anything else is refused
(403, counted in `perllm_extender_rejected_pods_total{reason}`): no decision, no learning
record, nothing published. Pods without the label are not PerLLM's and pass through as
before (nothing is recorded for them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool

from perllm.labels import LABEL_SERVICE, SCHEDULER_NAME
from perllm_extender.names import is_dns_label, is_dns_subdomain
from perllm_extender.pods import PodIndex
from perllm_extender.services import service_label

log = logging.getLogger("perllm.extender.security")
Obj = dict[str, Any]
PodSource = Callable[[str, str], Obj | None]

REASONS = ("unknown", "uid", "service", "scheduler", "bound")


class PodVerifier:
    def __init__(
        self, pods: PodIndex, registry: CollectorRegistry, source: PodSource | None = None
    ) -> None:
        self.pods, self.source = pods, source
        self.rejected = Counter(
            "perllm_extender_rejected_pods",
            "filter/prioritize requests refused: the pod is not what the request says "
            "(unknown, uid, service, scheduler, bound)",
            ["reason"],
            registry=registry,
        )
        for r in REASONS:
            self.rejected.labels(r)

    async def verify(self, pod: Obj) -> str | None:
        """None: act on the pod (or it is not a PerLLM pod). Else why it is refused."""
        if service_label(pod) is None:
            return None
        why = self._check(pod)
        if why is not None and why[0] == "unknown" and self.source is not None:
            ns, name = _ns_name(pod)
            # only Kubernetes names reach a field selector
            if is_dns_label(ns) and is_dns_subdomain(name):
                obj = await run_in_threadpool(self.source, ns, name)
                if obj is not None:
                    self.pods.upsert(obj)
                    why = self._check(pod)
        if why is None:
            return None
        self.rejected.labels(why[0]).inc()
        return why[1]

    def _check(self, pod: Obj) -> tuple[str, str] | None:
        ns, name = _ns_name(pod)
        meta = pod.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) else None
        spec = pod.get("spec")
        sched = spec.get("schedulerName") if isinstance(spec, dict) else None
        svc = service_label(pod)
        info = self.pods.get(f"{ns}/{name}")
        if info is None or not info.from_api:
            return "unknown", f"pod {ns}/{name} is unknown to the API server"
        if not isinstance(uid, str) or info.uid != uid:
            return "uid", f"pod {ns}/{name}: uid differs from the API server's"
        if info.service != svc:
            return "service", f"pod {ns}/{name}: {LABEL_SERVICE} differs from the API server's"
        if sched != SCHEDULER_NAME or info.scheduler != SCHEDULER_NAME:
            return "scheduler", f"pod {ns}/{name}: schedulerName is not {SCHEDULER_NAME}"
        if info.bound:
            return "bound", f"pod {ns}/{name} is already bound to a node"
        return None


def _ns_name(pod: Obj) -> tuple[str, str]:
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (
        ns if isinstance(ns, str) else "default",
        name if isinstance(name, str) else "",
    )


def api_pod_source(api_client: Any) -> PodSource:
    """A PerLLM pod from the API server by namespace and name, or None: a list with a field
    selector and the label selector, so the extender needs no `get` on pods beyond the
    informer's `list`."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api_client)

    def source(namespace: str, name: str) -> Obj | None:
        try:
            r: Any = core.list_namespaced_pod(
                namespace,
                field_selector=f"metadata.name={name}",
                label_selector=LABEL_SERVICE,
                _preload_content=False,
                _request_timeout=2,
            )
            items = json.loads(r.data).get("items") or []
        except Exception as e:  # an API error: the pod stays unverified (refused)
            log.warning("pod %s/%s: lookup failed: %s", namespace, name, type(e).__name__)
            return None
        return items[0] if items and isinstance(items[0], dict) else None

    return source
