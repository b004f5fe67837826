"""Offline OpenAPI v3 (structural schema) validation of objects against a CRD's schema, as
the API server's strict validation refuses them: PerLLM's own LLMService CRD
(tests/unit/test_manifests.py) and KServe's InferenceService CRD of the pinned release
(tools/kserve-crd.sh; tests/unit/test_operator_variants.py, test_operator_children.py).
CEL rules (x-kubernetes-validations) and string formats are not evaluated."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import yaml

from perllm.devcluster.binaries import cache_dir

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_errors(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """What the API server's structural-schema validation would refuse (unknown fields
    included: kubectl's strict field validation refuses them rather than pruning)."""
    at = path or "<root>"
    if "anyOf" in node and all(schema_errors(value, alt, path) for alt in node["anyOf"]):
        return [f"{at}: matches none of anyOf"]
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{at}: must be an integer or a string"]
    t = node.get("type")
    if t is not None:
        bad_bool = isinstance(value, bool) and t in ("integer", "number")
        if not isinstance(value, TYPES[t]) or bad_bool:
            return [f"{at}: must be {t}, not {type(value).__name__}"]
    errs: list[str] = []
    if "enum" in node and value not in node["enum"]:
        errs.append(f"{at}: {value!r} not in {node['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errs.append(f"{at}: below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errs.append(f"{at}: above {node['maximum']}")
        if node.get("exclusiveMinimum") is True and value <= node["minimum"]:
            errs.append(f"{at}: not above {node['minimum']}")
    if isinstance(value, str):
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", 1 << 62):
            errs.append(f"{at}: length {len(value)} outside the schema's bounds")
        if "pattern" in node and not re.search(node["pattern"], value):
            errs.append(f"{at}: {value!r} does not match {node['pattern']}")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0) or len(value) > node.get("maxItems", 1 << 62):
            errs.append(f"{at}: {len(value)} items outside the schema's bounds")
        # listType map/set: the API server refuses a duplicate key (an env var given twice)
        keys = node.get("x-kubernetes-list-map-keys")
        if node.get("x-kubernetes-list-type") == "map" and keys:
            seen = [tuple(i.get(k) for k in keys) for i in value if isinstance(i, dict)]
            errs += [
                f"{at}: duplicate entry {k}"
                for k in sorted(set(seen), key=str)
                if seen.count(k) > 1
            ]
        for i, item in enumerate(value):
            errs += schema_errors(item, node.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = node.get("properties", {})
        if len(value) > node.get("maxProperties", 1 << 62):
            errs.append(f"{at}: more than {node['maxProperties']} properties")
        errs += [f"{path}.{k}: required" for k in node.get("required", []) if k not in value]
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k in props:
                errs += schema_errors(v, props[k], sub)
            elif isinstance(node.get("additionalProperties"), dict):
                errs += schema_errors(v, node["additionalProperties"], sub)
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errs.append(f"{sub}: unknown field")
    return errs


def object_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """`schema_errors` of a custom object; metadata is the API server's (ObjectMeta), not
    the CRD's (whose schema says only `type: object`): check it apart."""
    return schema_errors({k: v for k, v in obj.items() if k != "metadata"}, schema)


@cache
def kserve_schema() -> dict[str, Any] | None:
    """KServe's v1beta1 InferenceService schema from tools/kserve-crd.sh's cache, if fetched."""
    files = sorted(cache_dir().glob("kserve-*/serving.kserve.io_inferenceservices.yaml"))
    if not files:
        return None
    crd = yaml.safe_load(files[-1].read_text())
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
    return schema
