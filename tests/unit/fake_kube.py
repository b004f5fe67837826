"""Fakes of the Kubernetes API shared by the router's and the operator's tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]


class ApiError(Exception):
    """What the kubernetes client raises: an HTTP status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merged recursively, `null` deletes a member,
    anything else (lists included) replaces the target whole."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _default() -> Obj:
    return {
        "metadata": {"name": "chat", "namespace": "ns"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "child": {"k": 1}},
    }


class FakeStatusApi:
    """An LLMService behind its status subresource (`CustomObjectsApi`'s get and
    merge-patch of the status): a real JSON merge patch, the resourceVersion checked
    (409 on a stale one, counted in `refused`; `conflicts` other writes land first;
    `before_patch` runs once, between a read and the patch: another writer's write in that
    gap), or every call failing with `fail`. `patches`: the bodies applied. `expect`: the
    (group, version, namespace, plural, name) every call must name, if given."""

    def __init__(
        self, obj: Obj | None = None, conflicts: int = 0, expect: tuple[str, ...] | None = None
    ) -> None:
        self.obj: Obj = copy.deepcopy(obj) if obj is not None else _default()
        self.obj["metadata"]["resourceVersion"] = "1"
        self.conflicts, self.expect = conflicts, expect
        self.patches: list[Obj] = []
        self.fail: Exception | None = None
        self.refused = 0
        self.before_patch: Callable[[], None] | None = None

    def _bump(self) -> None:
        md = self.obj["metadata"]
        md["resourceVersion"] = str(int(md["resourceVersion"]) + 1)

    def _check(self, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if self.expect is not None:
            assert args[:5] == self.expect, args
        if "_request_timeout" in kw:
            assert kw["_request_timeout"] > 0
        if self.fail is not None:
            raise self.fail

    def get_namespaced_custom_object(self, *args: Any, **kw: Any) -> Obj:
        self._check(args, kw)
        return copy.deepcopy(self.obj)

    def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> None:
        self._check(args, kw)
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook()
        body = args[5] if len(args) > 5 else kw["body"]
        if "_content_type" in kw:
            assert kw["_content_type"] == "application/merge-patch+json"
        if self.conflicts:  # another writer got there first
            self.conflicts -= 1
            self._bump()
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != self.obj["metadata"]["resourceVersion"]:
            self.refused += 1
            raise ApiException(status=409, reason="Conflict")  # what the client raises
        self.patches.append(copy.deepcopy(body))
        self.write({k: v for k, v in body.items() if k != "metadata"})

    def write(self, patch: Obj) -> None:
        """Another writer's merge patch (or the one just checked): applied, version bumped."""
        md = self.obj["metadata"]
        self.obj = merge_patch(self.obj, patch)
        self.obj["metadata"] = md
        self._bump()

    def cond(self, type_: str) -> Obj | None:
        conds = (self.obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)


def pod_of(deployment: str, pod_hash: str = "5d8f7c9b6") -> Obj:
    """The metadata the Deployment controller gives a pod of `deployment`: label
    `pod-template-hash` and the controller ownerReference to its ReplicaSet
    `<deployment>-<hash>` (merged into a test pod's `metadata`)."""
    rs = f"{deployment}-{pod_hash}"
    return {
        "labels": {"pod-template-hash": pod_hash},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": f"uid-{rs}",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
