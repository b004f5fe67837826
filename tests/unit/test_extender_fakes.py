"""Shared fakes for the extender's unit tests (no tests here): nodes, pods, a canned Prometheus."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from perllm_operator import podspec

from perllm.contract import Deadline, Requirements, ServiceSpec, Traffic
from perllm.devcluster import nodes as devnodes
from perllm.scenario import load_scenario
from perllm.telemetry.prom import Answer, Sample

Obj = dict[str, Any]

NODES: list[Obj] = devnodes.node_manifests(load_scenario("paper-llama2-7b"))
NAMES = [n["metadata"]["name"] for n in NODES]
EDGES = [n for n in NAMES if n.startswith("edge")]


def spec(
    name: str,
    seconds: float,
    *,
    per_token: float = 0.0,
    payload: float = 0.0,
    output: int = 128,
    prompt: int = 512,
    min_quality: float = 0.0,
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        model="llama2-7b",
        requirements=Requirements(
            deadline=Deadline(seconds=seconds, per_output_token_s=per_token),
            min_quality=min_quality,
        ),
        traffic=Traffic(payload_bytes=payload, output_tokens=output, prompt_tokens=prompt),
    )


def llmservice(**metadata: str) -> Obj:
    """The LLMService `chat` in namespace `llm` (edge and cloud variants, a 600 s deadline);
    `metadata` adds to its metadata."""
    return {
        "apiVersion": "perllm.io/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "chat", "namespace": "llm", **metadata},
        "spec": {
            "model": {
                "name": "llama2-7b",
                "variants": [
                    {"tier": "edge", "precision": "q4_k_m"},
                    {"tier": "cloud", "precision": "fp16"},
                ],
            },
            "requirements": {"deadline": {"seconds": 600}},
        },
    }


def pod(
    s: ServiceSpec, name: str = "p-0", uid: str = "uid-0", ns: str = "llm", node: str | None = None
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": ns,
        "uid": uid,
        "labels": podspec.labels({"metadata": {"name": s.name}}),
        "annotations": podspec.pod_annotations(s),
    }
    out: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"schedulerName": "perllm-scheduler", "containers": []},
        "status": {"phase": "Pending"},
    }
    if node:
        out["spec"]["nodeName"] = node
        out["status"]["phase"] = "Running"
    return out


def args(p: Obj, names: list[str] | None = None) -> Obj:
    return {"Pod": p, "Nodes": None, "NodeNames": NAMES if names is None else names}


def answer(
    rows: list[tuple[dict[str, str], float]], fresh: bool = True, at: float | None = None
) -> Answer:
    return Answer([Sample(labels, v) for labels, v in rows], fresh, at or time.time())


class StubProm:
    """`.query(promql)` answered by the first registered fragment found in the query."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.exact_rows: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.calls: list[str] = []
        self.down = False
        self.hook: Callable[[str], None] | None = None

    def set(self, fragment: str, rows: list[tuple[dict[str, str], float]]) -> None:
        self.rows[fragment] = rows

    def exact(self, promql: str, rows: list[tuple[dict[str, str], float]]) -> None:
        self.exact_rows[promql] = rows

    def query(self, promql: str) -> Answer | None:
        self.calls.append(promql)
        if self.hook is not None:
            self.hook(promql)
        if self.down:
            return None
        if promql in self.exact_rows:
            return answer(self.exact_rows[promql])
        for frag, rows in self.rows.items():
            if frag in promql:
                return answer(rows)
        return answer([])


@contextmanager
def fake_prometheus(results: Callable[[str], list[Obj]]) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server speaking /api/v1/query with canned vector results."""
    seen: list[str] = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            u = urlparse(self.path)
            q = parse_qs(u.query).get("query", [""])[0]
            seen.append(q)
            body = json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": results(q)}}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def vector(labels: dict[str, str], value: float) -> Obj:
    return {"metric": labels, "value": [time.time(), repr(value)]}
