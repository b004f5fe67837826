"""The operator's kopf registry, built from its `Config`: nothing is registered on import
and nothing is global, so two operators built from two configs share no state.

`build(config)` registers every handler on a fresh `kopf.OperatorRegistry` (the timer's
interval comes from the config) and makes the root `memo` carrying the per-operator
`State` (config, Prometheus client, attainment history); main.py runs both with
`kopf.run(registry=..., memo=...)`. kopf's settings are set by the `configure` startup
handler. Handler ids are the function names, as kopf's progress annotations record them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf

from perllm import labels
from perllm.crd import GROUP, PLURAL, VERSION
from perllm_operator import kube, reconcile, status
from perllm_operator.config import Config
from perllm_operator.state import State, memo_of
from perllm_operator.storage import HashDiffBaseStorage


@dataclass(frozen=True)
class Operator:
    registry: kopf.OperatorRegistry
    memo: kopf.Memo


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Startup: kopf's settings, then the Kubernetes client's credentials."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.DOMAIN)
    # Only a hash of the last handled spec (storage.py): bounded, never blocks deletion.
    settings.persistence.diffbase_storage = HashDiffBaseStorage()
    settings.persistence.finalizer = f"{labels.DOMAIN}/finalizer"
    settings.posting.level = 20  # logging.INFO: k8s Events for info and above
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # A tick runs in a thread and cannot be cancelled: on deletion, look again every second
    # (kopf's default is 60 s) so the finalizer goes as soon as the tick ends.
    settings.background.cancellation_polling = 1.0
    settings.background.instant_exit_timeout = 0.5
    kube.load_config()


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials from the kubeconfig or the pod's ServiceAccount, as the kubernetes client
    finds them (a plain `OperatorRegistry` has none of kopf's implicit login handlers)."""
    return kopf.login_via_client(**kwargs)


def build_registry(config: Config) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(login)
    kopf.on.startup(registry=reg)(configure)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(GROUP, VERSION, PLURAL, registry=reg)(reconcile.reconcile)
    kopf.on.event(
        "apps", "v1", "deployments", labels={labels.LABEL_SERVICE: kopf.PRESENT}, registry=reg
    )(status.deployment_event)
    kopf.on.delete(GROUP, VERSION, PLURAL, optional=True, registry=reg)(reconcile.forget)
    # The timer is why kopf puts its finalizer on every LLMService.
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=config.status_interval_s,
        initial_delay=min(5.0, config.status_interval_s),
        sharp=False,
        registry=reg,
    )(status.status_tick)
    kopf.on.probe(id="telemetry", registry=reg)(status.telemetry_probe)
    return reg


def build(config: Config) -> Operator:
    """A registry and the memo to run it with, from one config."""
    return Operator(build_registry(config), memo_of(State.from_config(config)))
