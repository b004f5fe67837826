"""`ExtenderConfig`: the extender's typed settings (the CLI flags, and what tests inject
instead of a cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SkipValidation

from perllm.profiles import Catalogue
from perllm.telemetry.prom import PromAccess
from perllm.telemetry.queries import window_seconds
from perllm.waits import WaitSeconds as Interval
from perllm_extender.publish import PublishApi
from perllm_extender.state import StateStore
from perllm_extender.telemetry import QueryClient

Obj = dict[str, Any]


def _window(v: str) -> str:
    window_seconds(v)  # ValueError (the field named by pydantic) unless a duration
    return v


# A PromQL range window ("1m"); the learner also needs its length in seconds
Window = Annotated[str, AfterValidator(_window)]


class ExtenderConfig(BaseModel):
    # Injected collaborators are protocols (structural): pydantic checks nothing about them.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prefix: str = "/scheduler"  # kube-scheduler's urlPrefix path (perllm/devcluster/config.py)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # Candidate nodes in one filter/prioritize request (NodeNames or Nodes.items) at most:
    # 8 MiB of short names is ~1 M of them, seconds of the event loop. kube-scheduler sends
    # the nodes that passed its filters, at most the cluster's (5,000 is Kubernetes'
    # tested scale; by default it samples fewer in large clusters).
    max_nodes: int = Field(10_000, ge=1)
    default_model: str = "llama2-7b"
    log_size: int = Field(1000, ge=0)
    catalogue: Catalogue | None = Field(None, repr=False)
    # Node objects on a node-cache miss, e.g. `nodes.api_node_source()`; None: cache only
    node_source: SkipValidation[Callable[[str], Obj | None] | None] = Field(None, repr=False)
    # -- live side (started in the app's lifespan) -----------------------------------------
    prometheus_access: PromAccess = PromAccess()  # url None: no telemetry, profile priors
    prometheus: SkipValidation[QueryClient | None] = Field(None, repr=False)  # not the URL
    telemetry_interval_s: Interval = 2.0
    max_telemetry_age_s: Interval = 60.0  # older values are ignored (prior used)
    latency_window: Window = "1m"
    learn_interval_s: Interval = 15.0
    learn_window: Window = "1m"
    state_interval_s: Interval = 60.0
    state_namespace: str = "perllm-system"
    state_store: SkipValidation[StateStore | None] = Field(None, repr=False)  # None: ConfigMap
    publish_api: SkipValidation[PublishApi | None] = Field(None, repr=False)  # None: kube
    publish_interval_s: float = Field(1.0, ge=0)  # per service
    # API server: informers, publication, the state ConfigMap. False: none of them unless
    # injected above (`--no-kube`, unit tests).
    kube: bool = False
    api_client: Any = Field(None, repr=False)  # kubernetes ApiClient (kube=True)
    informers: bool = True
    # -- security (docs/extender.md, "Security") -------------------------------------------
    # /telemetry, /telemetry/refresh, /learn, /state/save, /decisions. `perllm extender`
    # serves them only with --debug-routes; in process (TestClient) they are on.
    debug_routes: bool = True
    # FastAPI's /openapi.json, /docs and /redoc (`perllm extender --api-docs`). Off: nothing
    # kube-scheduler calls, /docs and /redoc load their scripts from a CDN, and the first
    # schema request builds it on the event loop. The schema offline: `create_app().openapi()`.
    api_docs: bool = False
    # True: the listener is TLS with a client CA (`perllm extender --tls-*`), so an https
    # request carries a verified client certificate; filter, prioritize and the debug routes
    # then refuse anything that did not come over it (a plain-HTTP side port, a proxy).
    client_auth: bool = False
    # Decide only for pods the pod informer (or, on a miss, the API) knows with the request's
    # uid, service label and schedulerName, not yet bound. None: when a pod informer runs.
    verify_pods: bool | None = None
    # (namespace, name) -> the Pod from the API server or None, asked on an informer miss;
    # None with `kube`: a list with a field selector (the informer's `list` permission)
    pod_source: SkipValidation[Callable[[str, str], Obj | None] | None] = Field(None, repr=False)
