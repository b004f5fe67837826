"""Decoding `/filter` and `/prioritize` requests and encoding their replies, off FastAPI's
generic body path.

With `nodeCacheCapable: false` a request carries every candidate Node (~1 MB at 1,000
nodes). FastAPI would decode it with the stdlib `json`, validate it, then validate and dump
the reply through the response model again; here pydantic-core's JSON parser decodes it
once, pydantic checks the envelope (`models.ExtenderArgs`: the Nodes stay plain dicts), and
the reply is written by pydantic-core's serializer. Errors keep FastAPI's shape: a
`RequestValidationError` (422, `app.py` formats it) naming the field. (orjson decodes the
1.1 MB body of 1,000 Nodes in ~2.5 ms against ~3.5 ms here, but over HTTP the two measured
the same within noise, so no extra dependency.)
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from perllm_extender.models import ExtenderArgs
from perllm_extender.names import is_dns_label, is_dns_subdomain

Obj = dict[str, Any]


def _invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> Exception:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg}])


_META_STR = ("name", "generateName", "namespace", "uid")


def _check_meta(meta: Any, loc: tuple[str | int, ...]) -> None:
    """The metadata fields the extender reads have their Kubernetes types: strings, and
    string maps for labels and annotations (an object-valued name once reached a set
    lookup and raised)."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise _invalid(loc, "metadata must be an object")
    for k in _META_STR:
        if k in meta and meta[k] is not None and not isinstance(meta[k], str):
            raise _invalid((*loc, k), f"metadata.{k} must be a string")
    # the pod key is `namespace/name` (decisions, learning, publication): a namespace "a/b"
    # was read as namespace "a" and decided with that namespace's LLMService
    for k, valid, what in (
        ("namespace", is_dns_label, "an RFC 1123 label"),
        ("name", is_dns_subdomain, "an RFC 1123 subdomain"),
    ):
        v = meta.get(k)
        if isinstance(v, str) and not valid(v):
            raise _invalid((*loc, k), f"metadata.{k} {v[:64]!r} is not {what}")
    for k in ("labels", "annotations"):
        m = meta.get(k)
        if m is not None and not (
            isinstance(m, dict) and all(isinstance(v, str) for v in m.values())
        ):
            raise _invalid((*loc, k), f"metadata.{k} must map strings to strings")


def _check(args: ExtenderArgs) -> None:
    _check_meta(args.Pod.get("metadata"), ("Pod", "metadata"))
    spec = args.Pod.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise _invalid(("Pod", "spec"), "spec must be an object")
    if isinstance(spec, dict) and not isinstance(spec.get("schedulerName", ""), str | None):
        raise _invalid(("Pod", "spec", "schedulerName"), "schedulerName must be a string")
    # Nodes: only the name, which is hashed (labels and annotations are read through
    # `nodes.meta_map`, which skips what is not a string); a full check costs ~1 ms at 1,000
    items = args.Nodes.items if args.Nodes is not None else None
    for i, o in enumerate(items or ()):
        meta = o.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise _invalid(("Nodes", "items", i, "metadata", "name"), "a Node needs a name")


class TooManyNodes(ValueError):
    """More candidate nodes than `max_nodes` (413, `{"Error": reason}`)."""


def _count_nodes(data: Any, max_nodes: int) -> None:
    """Refuses over `max_nodes` candidates before they are validated and decided on (each
    costs a validation, a lookup, a model; the envelope's own errors come after)."""
    if not isinstance(data, dict):
        return
    nodes = data.get("Nodes")
    for field, items in (
        ("NodeNames", data.get("NodeNames")),
        ("Nodes.items", nodes.get("items") if isinstance(nodes, dict) else None),
    ):
        if isinstance(items, list) and len(items) > max_nodes:
            raise TooManyNodes(
                f"{field}: {len(items)} candidate nodes, over the limit of {max_nodes} "
                "(perllm extender --max-nodes)"
            )


def parse_args(body: bytes, max_nodes: int) -> ExtenderArgs:
    """The request body as `ExtenderArgs`, or `RequestValidationError` (422), or
    `TooManyNodes` over `max_nodes` candidates."""
    try:
        # NaN and Infinity are not JSON (RFC 8259): refused, as Go's decoder does
        data = from_json(body, allow_inf_nan=False)
    except ValueError as e:
        raise _invalid((), f"JSON decode error: {e}", "json_invalid") from None
    _count_nodes(data, max_nodes)
    try:
        args = ExtenderArgs.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None
    _check(args)
    return args


def reply(content: Any) -> Response:
    """A JSON reply of plain dicts/lists (what the request decoded to, and the decision).
    An echoed Node may hold a number that overflowed to inf (`1e999` is JSON syntax):
    written as null, since `Infinity` is not JSON and the scheduler could not read the
    reply."""
    return Response(content=to_json(content, inf_nan_mode="null"), media_type="application/json")


def _inline(schema: Any, defs: Obj) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return _inline(defs[ref.rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def request_body_openapi() -> Obj:
    """The `ExtenderArgs` request body for the OpenAPI document (`openapi_extra`), since the
    endpoints read the raw body."""
    schema = ExtenderArgs.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(schema, schema.get("$defs", {}))}},
        }
    }
