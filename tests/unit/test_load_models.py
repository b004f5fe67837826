"""`perllm load --model`: one name for every class, or a name per class (`CLASS=NAME`)
for a target serving another model per class; the entries that cannot be meant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_load_servers import JSON, SSE, TOK, Parts, _in_thread, _load

from perllm.load import plan
from perllm.load_target import parse_models
from perllm.scenario import load_scenario

CLASSES = ["chat", "vision", "assistant"]  # the demo's


class ServesModels(Parts):
    """A server listing `served` at /v1/models, streaming an answer to a request naming
    one of them and refusing any other name (404, as vLLM does), or an image sent to a
    model not in `vision` (400); the names it was sent."""

    def __init__(self, served: list[str], vision: list[str]) -> None:
        super().__init__(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])
        self.served, self.vision, self.asked = served, vision, set[str]()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/v1/models":
            body = json.dumps({"data": [{"id": m} for m in self.served]}).encode()
            await Parts(200, JSON, [body])(scope, receive, send)
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        name = json.loads(body)["model"]
        self.asked.add(name)
        replay = _Replay(body, receive)  # (the body read here, read again by Parts)
        if name in self.served and (name in self.vision or b"image_url" not in body):
            await super().__call__(scope, replay, send)
            return
        why = "does not exist" if name not in self.served else "takes no images"
        err = json.dumps({"error": {"message": f"The model `{name}` {why}."}})
        await Parts(404 if name not in self.served else 400, JSON, [err.encode()])(
            scope, replay, send
        )


class _Replay:
    def __init__(self, body: bytes, receive: Any) -> None:
        self.body, self.receive = body, receive

    async def __call__(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await self.receive())


def test_a_name_per_class_and_a_name_for_the_rest() -> None:
    assert parse_models([], CLASSES, "demo") == {c: c for c in CLASSES}
    assert parse_models(["m"], CLASSES, "demo") == {c: "m" for c in CLASSES}
    got = parse_models(["vision = llava", "m", "assistant=yi=34b"], CLASSES, "demo")
    assert got == {"chat": "m", "vision": "llava", "assistant": "yi=34b"}
    assert parse_models(["vision=llava"], CLASSES, "demo")["chat"] == "chat"
    sc = load_scenario("demo")
    planned = plan(sc, 0, 1000.0, 30, None, {"vision": "llava"})
    assert {p.cls for p in planned} == set(CLASSES)  # (the test sees every class)
    for p in planned:
        want = "llava" if p.cls == "vision" else p.cls
        assert p.model == p.body["model"] == want


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        (["nosuch=m"], "nosuch: not a class of demo (its classes: chat, vision, assistant)"),
        (["chat=a", "chat=b"], "class chat given twice"),
        (["a", "b"], "two names for every class, a and b"),
        (["=m"], "'=m': expected CLASS=NAME, neither empty"),
        (["chat="], "'chat=': expected CLASS=NAME, neither empty"),
        ([""], "an empty model name"),
        ([" "], "an empty model name"),
    ],
)
def test_a_model_entry_that_cannot_be_meant_is_refused_before_sending(
    tmp_path: Path, entries: list[str], said: str
) -> None:
    """`--model` took one name: `chat=a` was sent as the model `chat=a` by every class, and
    `--model ''` sent each class's name as if it were not given."""
    args = [a for e in entries for a in ("--model", e)]
    rc, out, rep = _load("http://127.0.0.1:9", tmp_path, *args)
    assert rc == 2 and f"error: --model: {said}" in out and rep == {}, out


def test_each_class_is_sent_the_model_its_server_serves(tmp_path: Path) -> None:
    """A target serving another model per class (a vision model beside a chat one) could
    not be replayed: one --model name for every class, each other class's requests 404."""
    app = ServesModels(["llama-3-8b", "llava-1.6"], vision=["llava-1.6"])
    with _in_thread(app) as url:
        n = ("--max-requests", "30")
        rc, out, rep = _load(url, tmp_path, *n, "--model", "llama-3-8b")
        vision = rep["per_class"]["vision"]["sent"]
        assert rc == 0 and rep["ok"] == 30 - vision and vision > 0, out
        assert rep["http_errors"] == {"400: The model `llama-3-8b` takes no images.": vision}
        rc, out, rep = _load(url, tmp_path, *n, "--model", "llama-3-8b", "--model",
                             "vision=llava-1.6")  # fmt: skip
        assert rc == 0 and rep["ok"] == rep["sent"] == 30, out
        assert set(rep["per_class"]) == set(CLASSES) and "warning:" not in out, out
        assert app.asked == {"llama-3-8b", "llava-1.6"}
        # a name it does not list: the warning names it and the class sending it
        rc, out, rep = _load(url, tmp_path, *n, "--model", "chat=llama-3-8b")
        said = ("these requests name assistant (class assistant), vision (class vision), "
                "which it may refuse (--model NAME, or CLASS=NAME for one class")  # fmt: skip
        assert rc == 0 and said in out, out
        # an entry for a class --class leaves out sends nothing, and is no error
        rc, out, rep = _load(url, tmp_path, "--class", "chat", "--model", "chat=llama-3-8b",
                             "--model", "vision=nosuch")  # fmt: skip
        assert rc == 0 and rep["ok"] == 2 and "warning:" not in out, out
