"""The service a pod belongs to, as a `perllm.contract.ServiceSpec`.

Pods rendered by the operator carry the label `perllm.io/service=<LLMService name>` and
their requirements as annotations (`operator/perllm_operator/render.py`). The registry holds
the full specs fed from `LLMService` objects; the pod's annotations override its
requirements. Without a registered spec the service is built from the annotations alone
(the model from `perllm.io/model`, else the configured default). Pods without the label
are not PerLLM's: `resolve()` returns None and the extender passes them through.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import ValidationError

from perllm.contract import Deadline, Requirements, ServiceSpec
from perllm.crd import service_spec
from perllm.labels import (
    ANN_DEADLINE,
    ANN_DEADLINE_PER_TOKEN,
    ANN_MIN_QUALITY,
    ANN_PERCENTILE,
    DOMAIN,
    LABEL_SERVICE,
    ann_number,
    shown,
)
from perllm_extender.names import is_dns_label
from perllm_extender.nodes import meta_map

ANN_MODEL = f"{DOMAIN}/model"  # optional: the catalogue model key when no LLMService is known

Obj = dict[str, Any]


class BadPod(ValueError):
    """A PerLLM pod whose requirements cannot be read; the message says why."""


def pod_key(pod: Obj) -> str:
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        return "?"
    ns, name = meta.get("namespace"), meta.get("name") or meta.get("generateName")
    return f"{ns if isinstance(ns, str) else 'default'}/{name if isinstance(name, str) else '?'}"


def pod_uid(pod: Obj) -> str:
    meta = pod.get("metadata")
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return uid if isinstance(uid, str) and uid else pod_key(pod)


def service_label(pod: Obj) -> str | None:
    return meta_map(pod, "labels").get(LABEL_SERVICE) or None


class ServiceRegistry:
    """ServiceSpecs by (namespace, name), fed from `LLMService` objects (the informer, or
    `add_llmservice()`); `add(spec)` without a namespace serves every namespace."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], ServiceSpec] = {}
        self._uids: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def add(self, spec: ServiceSpec, namespace: str | None = None) -> None:
        with self._lock:
            self._specs[(namespace or "", spec.name)] = spec

    def add_llmservice(self, obj: Obj) -> ServiceSpec:
        spec = service_spec(obj)  # raises perllm.crd.InvalidService
        meta = obj.get("metadata")
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        self.add(spec, ns if isinstance(ns, str) else None)
        self.note_uid(obj)
        return spec

    def note_uid(self, obj: Obj) -> None:
        """Remember the LLMService's uid (Events must carry it for `kubectl describe`)."""
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            ns, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
            if isinstance(ns, str) and isinstance(name, str) and isinstance(uid, str) and uid:
                with self._lock:
                    self._uids[(ns, name)] = uid

    def uid(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._uids.get((namespace, name))

    def remove(self, name: str, namespace: str | None = None) -> None:
        with self._lock:
            self._specs.pop((namespace or "", name), None)
            self._uids.pop((namespace or "", name), None)

    def get(self, name: str, namespace: str | None = None) -> ServiceSpec | None:
        with self._lock:
            if namespace is not None and (namespace, name) in self._specs:
                return self._specs[(namespace, name)]
            if ("", name) in self._specs:
                return self._specs[("", name)]
            if namespace is None:  # any namespace
                return next((s for (_, n), s in self._specs.items() if n == name), None)
            return None

    def replace(self, specs: list[tuple[str, ServiceSpec]]) -> None:
        """A full list from the informer: (namespace, spec) pairs."""
        with self._lock:
            self._specs = {k: v for k, v in self._specs.items() if k[0] == ""}
            self._uids = {}
            for ns, spec in specs:
                self._specs[(ns, spec.name)] = spec

    def __len__(self) -> int:
        return len(self._specs)

    def resolve(self, pod: Obj, default_model: str) -> ServiceSpec | None:
        name = service_label(pod)
        if name is None:
            return None
        if not is_dns_label(name):  # Kubernetes has no longer label value, nor LLMService name
            raise BadPod(
                f"pod {pod_key(pod)}: label {LABEL_SERVICE}={shown(name)} is not an "
                "LLMService name (an RFC 1123 label)"
            )
        ann = meta_map(pod, "annotations")

        def num(key: str) -> float | None:
            try:
                return ann_number(ann, key)
            except ValueError as e:
                raise BadPod(f"pod {pod_key(pod)}: {e}") from None

        dl_s, dl_tok, pct, q = (
            num(k) for k in (ANN_DEADLINE, ANN_DEADLINE_PER_TOKEN, ANN_PERCENTILE, ANN_MIN_QUALITY)
        )
        base = self.get(name, pod_key(pod).split("/", 1)[0])
        try:
            if base is None:
                if dl_s is None:
                    raise BadPod(
                        f"pod {pod_key(pod)}: service {name!r} is not registered and "
                        f"the pod has no {ANN_DEADLINE} annotation"
                    )
                return ServiceSpec(
                    name=name,
                    model=ann.get(ANN_MODEL, default_model),
                    requirements=Requirements(
                        deadline=Deadline(
                            seconds=dl_s,
                            per_output_token_s=dl_tok or 0.0,
                            percentile=pct if pct is not None else 95.0,
                        ),
                        min_quality=q or 0.0,
                    ),
                )
            dl = base.requirements.deadline
            req = Requirements(
                deadline=Deadline(
                    seconds=dl.seconds if dl_s is None else dl_s,
                    per_output_token_s=dl.per_output_token_s if dl_tok is None else dl_tok,
                    percentile=dl.percentile if pct is None else pct,
                ),
                min_quality=base.requirements.min_quality if q is None else q,
            )
            return base.model_copy(update={"requirements": req})
        except ValidationError as e:
            msg = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise BadPod(f"pod {pod_key(pod)}: service {name!r}: {msg}") from None
