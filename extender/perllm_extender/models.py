"""Wire format of the kube-scheduler extender (k8s.io/kube-scheduler/extender/v1 types).

The Go structs have no json tags, so keys are PascalCase exactly; the embedded Pod and
Node objects are ordinary camelCase Kubernetes JSON, kept as loosely typed dicts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Obj = dict[str, Any]


class NodeList(BaseModel):
    """`v1.NodeList` as the scheduler sends it: `{"metadata": {}, "items": [...]}`."""

    model_config = ConfigDict(extra="allow")

    metadata: Obj | None = None
    # fail_fast: the first bad item is the error; all of them, 4 M in an 8 MB body, took
    # over a minute and ~5 GB to report (the event loop, /healthz included, stood still)
    items: list[Obj] | None = Field(None, fail_fast=True)


class ExtenderArgs(BaseModel):
    """Body of `/filter` and `/prioritize`: `Nodes` (nodeCacheCapable false) or
    `NodeNames` (true); the other one is null."""

    model_config = ConfigDict(extra="ignore")

    Pod: Obj
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = Field(None, fail_fast=True)  # as NodeList.items


class ExtenderFilterResult(BaseModel):
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(BaseModel):
    Host: str
    Score: int = Field(ge=0, le=10)


MAX_PRIORITY = 10
