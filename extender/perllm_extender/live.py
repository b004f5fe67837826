"""The extender's live side, wired together: telemetry, informers, learning, publication
and persistence around one `Scheduler`. Built by `create_app`, started and stopped by the
app's lifespan; every part is optional and degrades to the offline behaviour."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from perllm.contract import Server
from perllm.profiles import Catalogue
from perllm_extender.decide import Scheduler
from perllm_extender.decision import DecisionEvent
from perllm_extender.informers import Informer, kube_informers
from perllm_extender.learning import LatencyObservation, Learner, Placement
from perllm_extender.metrics import Metrics
from perllm_extender.publish import KubePublishApi, Publisher
from perllm_extender.state import ConfigMapStore, StateKeeper
from perllm_extender.telemetry import QueryClient, Telemetry

if TYPE_CHECKING:
    from perllm_extender.config import ExtenderConfig

log = logging.getLogger("perllm.extender")


class Live:
    def __init__(self, cfg: ExtenderConfig, catalogue: Catalogue, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics
        prom: QueryClient | None = cfg.prometheus
        if prom is None and cfg.prometheus_access.url:
            prom = cfg.prometheus_access.client()
        self.scheduler = sched = Scheduler(
            catalogue,
            default_model=cfg.default_model,
            log_size=cfg.log_size,
            node_source=cfg.node_source,
        )
        self.telemetry = Telemetry(
            prom,
            interval_s=cfg.telemetry_interval_s,
            max_age_s=cfg.max_telemetry_age_s,
            latency_window=cfg.latency_window,
            pod_node=sched.pods.node_of,
        )
        sched.telemetry = self.telemetry
        metrics.staleness.set_function(self._staleness)

        self.learner = self._learner(prom, catalogue)
        sched.listeners.append(self._record)

        client = cfg.api_client
        if cfg.kube and client is None:
            from perllm_extender.nodes import kube_api_client

            client = kube_api_client()
            if client is None:
                log.warning(
                    "--kube: no cluster configuration (KUBECONFIG or in-cluster): "
                    "no informers, publication or persisted state"
                )
        self.api_client: Any = client

        self.publisher = self._publisher(client)

        store = cfg.state_store
        if store is None and client is not None:
            store = ConfigMapStore(client, cfg.state_namespace)
        self.keeper: StateKeeper | None = None
        if store is not None:
            self.keeper = StateKeeper(
                store,
                sched.arms,
                interval_s=cfg.state_interval_s,
                on_save=lambda ok: metrics.state_saves.labels("ok" if ok else "error").inc(),
                on_size=self._state_size,
            )
        metrics.learned_services.set_function(lambda: len(sched.arms))

        self.informers: list[Informer] = []
        if client is not None and cfg.informers:
            self.informers = kube_informers(client, sched.nodes, sched.pods, sched.services)
            svc_inf = next(i for i in self.informers if i.name == "llmservices")
            # until it has listed, no service is known to exist: none may expire as deleted
            sched.arms.liveness_known = lambda: svc_inf.synced
        self.started = False

    def _learner(self, prom: QueryClient | None, catalogue: Catalogue) -> Learner:
        sched, cfg, metrics = self.scheduler, self.cfg, self.metrics

        def is_gpu(s: Server) -> bool:
            hw = catalogue.hardware.get(s.hardware)
            return hw is not None and hw.kind == "gpu"

        def apply(obs: list[LatencyObservation]) -> int:
            n = sched.apply(obs)
            metrics.learning_updates.inc(n)
            return n

        return Learner(
            prom,
            apply,
            pods=sched.pods,
            snapshot=lambda: self.telemetry.snapshot,
            is_gpu=is_gpu,
            interval_s=cfg.learn_interval_s,
            window=cfg.learn_window,
            max_age_s=self.telemetry.max_age_s,
        )

    def _publisher(self, client: Any) -> Publisher | None:
        cfg, sched, metrics = self.cfg, self.scheduler, self.metrics
        api = cfg.publish_api
        if api is None and client is not None:
            api = KubePublishApi(client)
        if api is None:
            return None
        pub = Publisher(
            api,
            min_interval_s=cfg.publish_interval_s,
            service_nodes=sched.pods.service_nodes,
            service_uid=sched.services.uid,
            on_failure=lambda what: metrics.publish_failures.labels(what).inc(),
        )
        sched.listeners.append(pub.submit)
        sched.pods.on_change = pub.nodes_changed
        return pub

    def _state_size(self, size: int, left_out: int) -> None:
        self.metrics.state_bytes.set(size)
        self.metrics.state_left_out.set(left_out)

    def _staleness(self) -> float:
        return self.telemetry.staleness_s()

    def _record(self, ev: DecisionEvent) -> None:
        p = Placement.of(ev)
        if p is not None:
            self.learner.record(p)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.keeper is not None:
            self.keeper.restore()  # before the first decision
            self.keeper.start()
        for inf in self.informers:
            inf.start()
        self.telemetry.start()
        if self.learner.prom is not None:
            self.learner.start()
        if self.publisher is not None:
            self.publisher.start()

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        # The learned state first (after the last learning pass): kubelet kills the pod at
        # the end of its grace period (30 s), and the publisher's last writes or an
        # informer blocked in a watch read could use that up before the save.
        self.learner.stop()
        if self.keeper is not None:
            self.keeper.stop()  # saves once more
        self.telemetry.stop()
        for inf in self.informers:
            inf.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.scheduler.close()

    def readiness(self) -> dict[str, Any]:
        """Always ready once started (decisions continue on priors); says what degrades."""
        reasons = []
        why = self.telemetry.degraded()
        if why:
            reasons.append(why)
        for inf in self.informers:
            if not inf.synced:
                reasons.append(
                    f"{inf.name} informer not synced"
                    + (f": {inf.last_error}" if inf.last_error else "")
                )
            elif inf.last_error:
                reasons.append(f"{inf.name} informer: {inf.last_error}")
        if self.keeper is not None and self.keeper.last_error:
            reasons.append(f"learned state: {self.keeper.last_error}")
        if self.keeper is not None and self.keeper.size_warning:
            reasons.append(self.keeper.size_warning)
        stale = self.telemetry.staleness_s()
        return {
            "status": "ready",
            "telemetry": "degraded" if why else "ok",
            "staleness_s": None if math.isinf(stale) else round(stale, 3),
            "degraded": bool(reasons),
            "reason": "; ".join(reasons) or None,
            "informers": {i.name: i.synced for i in self.informers},
        }
