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

Obj = dict[str, Any]


def parse_args(body: bytes) -> ExtenderArgs:
    """The request body as `ExtenderArgs`, or `RequestValidationError` (422)."""
    try:
        data = from_json(body)
    except ValueError as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(e)},
                }
            ]
        ) from None
    try:
        return ExtenderArgs.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def reply(content: Any) -> Response:
    """A JSON reply of plain dicts/lists (what the request decoded to, and the decision)."""
    return Response(content=to_json(content), media_type="application/json")


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
