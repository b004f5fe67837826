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
    items: list[Obj] | None = None


class ExtenderArgs(BaseModel):
    """Body of `/filter` and `/prioritize`: `Nodes` (nodeCacheCapable false) or
    `NodeNames` (true); the other one is null."""

    model_config = ConfigDict(extra="ignore")

    Pod: Obj
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None


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
