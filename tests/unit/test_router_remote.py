"""A remote tier behind the router (another cluster's router): the router's own client
auth (`auth.token_file`) and the credential it sends to a remote backend
(`backends[].token_file`), both read from files such as mounted Secret keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from perllm.router.app import Router
from perllm.router.config import RouterConfigError, parse_config
from perllm.router.serving import serving
from perllm.router.stub import StubBackend
from perllm.secrets import SecretError, SecretFile

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello " * 50}]}
LINKS = {
    "edge": ("nvidia-l4", {"bandwidth_mbps": 100, "rtt_ms": 5}),
    "cloud": ("a100-80gb-sxm", {"bandwidth_mbps": 300, "rtt_ms": 30}),
}


def backend(name: str, url: str, tier: str, **kw: Any) -> dict[str, Any]:
    hw, link = LINKS[tier]
    return {"name": name, "url": url, "tier": tier, "hardware": hw, "link": link, **kw}


def secret(tmp_path: Path, name: str, value: str) -> str:
    p = tmp_path / name
    p.write_text(value + "\n")  # a trailing newline, as `kubectl create secret` files have
    return str(p)


def test_clients_must_present_the_routers_bearer_token(tmp_path: Path) -> None:
    async def go() -> None:
        async with contextlib.AsyncExitStack() as st:
            stub = StubBackend("edge")
            edge = await st.enter_async_context(serving(stub))
            cfg = {
                "scenario": "demo",
                "service_class": "chat",
                "backends": [backend("edge", edge, "edge")],
                "auth": {"token_file": secret(tmp_path, "token", "s3cret")},
            }
            r = Router(parse_config(cfg))
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
            sent = ("", "Bearer wrong", "s3cret", "Basic s3cret", "bearer S3CRET")
            for h in [{"authorization": a} if a else {} for a in sent]:
                resp = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                assert resp.status_code == 401, resp.text
                assert resp.json()["error"]["type"] == "authentication_error"
                assert "s3cret" not in resp.text
            ok = await c.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer s3cret"}
            )
            assert ok.status_code == 200, ok.text
            # the router's token is its own: never sent on to a backend without a token_file
            assert stub.requests == 1 and b"authorization" not in stub.last_headers
            assert (await c.get("/v1/models")).status_code == 401  # /v1/*, as documented
            good = {"authorization": "Bearer s3cret"}
            assert (await c.get("/v1/models", headers=good)).json()["data"][0]["id"]
            # the scheme's name is case-insensitive (RFC 9110), the token is not
            for scheme in ("bearer", "BEARER"):
                h = {"authorization": f"{scheme} s3cret"}
                assert (await c.get("/v1/models", headers=h)).status_code == 200
            assert (await c.get("/healthz")).status_code == 200  # probes need no token
            assert (
                'perllm_router_rejected_requests_total{reason="unauthorized",status="401"} 6.0'
                in (await c.get("/metrics")).text
            )
            await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_remote_backend_gets_its_own_token_never_the_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with contextlib.AsyncExitStack() as st:
            stubs = {"edge": StubBackend("edge"), "remote": StubBackend("remote")}
            urls = {n: await st.enter_async_context(serving(s)) for n, s in stubs.items()}
            token = secret(tmp_path, "remote-token", "cloud-side")
            cfg = {
                "scenario": "demo",
                "service_class": "chat",
                "backends": [
                    backend("edge", urls["edge"], "edge"),
                    backend("remote", urls["remote"], "cloud", token_file=token),
                ],
            }
            with caplog.at_level("WARNING", logger="perllm.router"):
                r = Router(parse_config(cfg))
            # its token goes over plain http here: said once, naming the backend, not it
            said = [m for m in caplog.messages if "in clear" in m]
            assert len(said) == 1 and "backend remote" in said[0]
            assert "cloud-side" not in caplog.text
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
            mine = {"authorization": "Bearer the-clients-own"}
            for _ in range(12):
                resp = await c.post("/v1/chat/completions", json=CHAT, headers=mine)
                assert resp.status_code == 200
            # CS-UCB sends this service's requests to the (remote) cloud tier first.
            assert stubs["remote"].requests > 0
            assert stubs["remote"].last_headers[b"authorization"] == b"Bearer cloud-side"
            if stubs["edge"].requests:
                assert stubs["edge"].last_headers[b"authorization"] == b"Bearer the-clients-own"
            await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_missing_token_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    cfg = {
        "scenario": "demo",
        "service_class": "chat",
        "backends": [backend("edge", "http://127.0.0.1:9", "edge")],
        "auth": {"token_file": missing},
    }
    with pytest.raises(RouterConfigError, match="nope"):
        Router(parse_config(cfg))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        SecretFile(str(tmp_path / "empty"))


def test_a_rotated_secret_is_picked_up_and_a_vanished_one_keeps_its_value(
    tmp_path: Path,
) -> None:
    path = secret(tmp_path, "t", "one")
    s = SecretFile(path, every_s=0.0)
    assert s.bearer() == b"Bearer one"
    Path(path).write_text("two")
    os.utime(path, (1, 1))  # a new mtime, as the kubelet's atomic swap gives
    assert s.value() == b"two"
    os.remove(path)
    assert s.value() == b"two"  # the last good value while the file is briefly gone


def test_a_secret_emptied_mid_rewrite_keeps_its_last_value(tmp_path: Path) -> None:
    """A file rewritten in place (truncated, then written) reads empty for a moment: the
    last good value serves meanwhile. It raised SecretError, so the request that read it
    got a 500 (the router's client auth, a remote tier's token)."""
    path = secret(tmp_path, "t", "one")
    s = SecretFile(path, every_s=0.0)
    Path(path).write_text("")
    assert s.value() == b"one"
    Path(path).write_text("two")
    assert s.value() == b"two"  # (not taken for the empty read's file: read again)


def test_a_secret_swapped_for_a_file_of_the_same_mtime_is_read_again(tmp_path: Path) -> None:
    """The kubelet swaps a new file in (a symlink to a new directory); one with the same
    mtime (copied with `cp -p`, a coarse clock) was taken for the old: the old token stayed
    in use for good."""
    path = secret(tmp_path, "t", "one")
    s = SecretFile(path, every_s=0.0)
    mtime = os.stat(path).st_mtime_ns
    new = secret(tmp_path, "t.new", "two")
    os.utime(new, ns=(mtime, mtime))
    os.replace(new, path)
    assert s.value() == b"two"


def test_a_ca_file_back_as_it_was_clears_its_error(tmp_path: Path) -> None:
    """A Secret volume's swap (`..data` to a new directory) is read again; a file that was
    briefly gone and came back as it was read as the last good one still failing: `error`
    (the condition's "not read again", a warning) stayed until the file changed, if ever."""
    import shutil

    from perllm.devcluster.certs import generate
    from perllm.secrets import CaFile

    old, new = generate(tmp_path / "old"), generate(tmp_path / "new")
    for version, pem in (("..v1", old.ca), ("..v2", new.ca)):
        (tmp_path / version).mkdir()
        shutil.copy(pem, tmp_path / version / "ca.crt")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "ca.crt").symlink_to("..data/ca.crt")  # (as the kubelet lays it out)
    ca = CaFile(str(tmp_path / "ca.crt"), every_s=0.0)
    first = ca.current()
    (tmp_path / "..tmp").symlink_to("..v2")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")  # the kubelet's atomic swap
    assert ca.current() is not first and ca.error is None
    os.rename(tmp_path / "..v2", tmp_path / "..gone")
    second = ca.current()
    assert ca.error is not None and "ca.crt" in ca.error  # the last good CAs serve
    os.rename(tmp_path / "..gone", tmp_path / "..v2")  # back, the same file
    assert ca.current() is second and ca.error is None


def test_discovery_sends_prometheus_the_token_file_it_is_given(tmp_path: Path) -> None:
    # discovery.prometheus_token_file (the chart's prometheus.tokenSecret) reaches the
    # Prometheus client that reads the measured bandwidth; an empty path is refused.
    cfg = {
        "scenario": "demo",
        "service_class": "chat",
        "discovery": {
            "service": "ns/chat",
            "prometheus": "http://127.0.0.1:9",
            "prometheus_token_file": str(tmp_path / "token"),
        },
        "backends": [backend("cloud-cluster", "http://cloud:8080", "cloud")],
    }
    r = Router(parse_config(cfg))
    assert r.discovery is not None
    assert r.discovery.bandwidth_once() == {}  # (no token file yet: a failed query)
    prom = r.discovery._prom
    assert prom is not None and prom.token_file == str(tmp_path / "token")
    assert "token" in (prom.health.last_error or "")
    asyncio.run(r.aclose())
    bad = {**cfg, "discovery": {**cfg["discovery"], "prometheus_token_file": ""}}  # type: ignore[dict-item]
    with pytest.raises(RouterConfigError, match="prometheus_token_file"):
        parse_config(bad)
    # an https Prometheus' CA reaches the same client; skipping verification excludes it
    ca = {**cfg["discovery"], "prometheus_ca_file": "/ca.crt"}  # type: ignore[dict-item]
    r = Router(parse_config({**cfg, "discovery": ca}))
    assert r.discovery is not None and r.discovery.bandwidth_once() == {}
    assert r.discovery._prom.ca_file == "/ca.crt"
    assert not r.discovery._prom.insecure_skip_verify
    asyncio.run(r.aclose())
    both = {**ca, "prometheus_insecure_skip_verify": True}
    with pytest.raises(RouterConfigError, match=r"prometheus_ca_file.*choose one"):
        parse_config({**cfg, "discovery": both})


@pytest.mark.parametrize("key", ["ca_file", "token_file"])
def test_a_credential_path_with_a_nul_byte_is_a_config_error(key: str) -> None:
    """YAML can spell a NUL ("\\0") in a path, which os.stat refuses with a ValueError:
    the router's start was that traceback, naming no field. Now the file's error."""
    bad = backend("cloud", "https://cloud.example:8443", "cloud", **{key: "/run/a\0b"})
    with pytest.raises(RouterConfigError, match=rf"{key}: '/run/a\\x00b': .*null byte"):
        Router(parse_config({"scenario": "demo", "service_class": "chat", "backends": [bad]}))


def test_a_remote_tier_named_after_an_edge_node_takes_its_measured_bandwidth() -> None:
    """`node` on a remote tier: the path bandwidth that node's agent measures to the other
    side's agent (agent.peers, from Prometheus) replaces the link's nominal one."""
    from test_router_discovery import FakeApi, FakeCustom, _chat

    async def go() -> None:
        cfg = {
            "scenario": "demo",
            "service_class": "chat",
            "discovery": {"service": "ns/chat", "prometheus": "http://prom:9090"},
            "backends": [backend("cloud-cluster", "http://cloud:8080", "cloud", node="edge-1")],
        }
        r = Router(parse_config(cfg))
        assert r.discovery is not None
        r.discovery._api, r.discovery._custom = FakeApi(), FakeCustom(_chat())
        r.discovery.bandwidth_once = lambda: {"edge-1": 42.0}  # type: ignore[method-assign]
        await r.discovery.refresh()
        m = r._members
        assert m is not None
        bw = dict(zip(m.names, m.bw.tolist(), strict=True))
        assert bw == {"a": 42.0, "cloud-cluster": 42.0}  # pod "a" runs on edge-1 too
        await r.aclose()

    asyncio.run(go())


def test_an_https_remote_is_verified_against_its_ca_file(tmp_path: Path) -> None:
    """A private remote cluster's certificate is verified against the CA its `ca_file`
    gives (there was no way to trust one: every request to it failed verification);
    without it, against the system's CAs, which refuse it."""
    from perllm.devcluster.certs import generate

    tls = generate(tmp_path)

    async def go() -> None:
        async with contextlib.AsyncExitStack() as st:
            stub = StubBackend("remote")
            url = await st.enter_async_context(
                serving(stub, tls=(str(tls.server_cert), str(tls.server_key)))
            )
            assert url.startswith("https://")
            token = secret(tmp_path, "remote-token", "cloud-side")
            for ca, want in ((None, 502), (str(tls.ca), 200)):
                b = backend("remote", url, "cloud", token_file=token, ca_file=ca)
                cfg = {"scenario": "demo", "service_class": "chat", "backends": [b],
                       "limits": {"retries": 0}}  # fmt: skip
                r = Router(parse_config(cfg))
                c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == want, resp.text
                if ca is None:
                    assert "CERTIFICATE_VERIFY_FAILED" in resp.json()["error"]["message"]
                    assert stub.requests == 0  # nothing (no token) went to it
                await r.aclose()
            assert stub.last_headers[b"authorization"] == b"Bearer cloud-side"

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_rotated_ca_file_is_read_again_and_a_broken_one_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A remote's `ca_file` was read once, at first use: after the remote's certificate
    and the mounted CA were rotated together, every request to it failed verification
    until the router restarted. Now it is read again when it changes (as token files
    are); a CA file that became unreadable or holds no certificate keeps the last good
    CAs in use (as a token file keeps its last value), said in the log and in the
    condition's message."""
    import shutil

    from perllm.devcluster.certs import generate
    from perllm.router.status import reachable

    old, new = generate(tmp_path / "old"), generate(tmp_path / "new")
    ca = tmp_path / "ca.crt"
    shutil.copy(old.ca, ca)

    async def go() -> None:
        stub = StubBackend("remote")
        async with contextlib.AsyncExitStack() as st:
            url = await st.enter_async_context(
                serving(stub, tls=(str(old.server_cert), str(old.server_key)))
            )
            port = int(url.rsplit(":", 1)[1])
            b = backend("remote", url, "cloud", ca_file=str(ca))
            cfg = {"scenario": "demo", "service_class": "chat", "backends": [b],
                   "limits": {"retries": 0, "eject_s": 0.01, "eject_max_s": 0.01}}  # fmt: skip
            r = Router(parse_config(cfg))
            r._cas[str(ca)]._every = 0.0  # (re-read at once when rotated)
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # The remote's certificate rotated to a new CA, and the mounted CA file with it.
        tls = (str(new.server_cert), str(new.server_key))
        async with serving(stub, port=port, tls=tls):
            shutil.copy(new.ca, ca)
            os.utime(ca, (1, 1))  # (a new mtime, whatever the clock's resolution)
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert reachable(r.backends, ["remote"], r.refusing(), cas=r.ca_errors())[0]
            for broken in ("junk", "gone"):
                if broken == "junk":
                    ca.write_text("not a certificate\n")
                else:
                    ca.unlink()
                for p in r._pools.values():  # (a new connection: the CAs are read for it)
                    p.close()
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200, resp.text  # the last good CAs verify it
                ok, _, message = reachable(r.backends, ["remote"], r.refusing(), cas=r.ca_errors())
                said = f"ca_file of remote not read again, the last good CAs are in use: {ca}: "
                assert ok and said in message
            assert any(f"{ca}" in m and "last good" in m for m in caplog.messages)
            shutil.copy(new.ca, ca)
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert not r.ca_errors()
            await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_remotes_ca_file_must_exist_and_its_url_be_https(tmp_path: Path) -> None:
    url = "https://cloud.example.com"
    nope = backend("remote", url, "cloud", ca_file=str(tmp_path / "nope"))
    missing = {"scenario": "demo", "service_class": "chat", "backends": [nope]}
    with pytest.raises(RouterConfigError, match=r"backends\[remote\]\.ca_file: .*nope"):
        Router(parse_config(missing))
    (tmp_path / "junk").write_text("not a certificate\n")
    junk = {
        **missing,
        "backends": [backend("remote", url, "cloud", ca_file=str(tmp_path / "junk"))],
    }
    with pytest.raises(RouterConfigError, match=r"backends\[remote\]\.ca_file: .*junk"):
        Router(parse_config(junk))
    plain = {**missing, "backends": [backend("remote", "http://x", "cloud", ca_file="/ca.crt")]}
    with pytest.raises(RouterConfigError, match="ca_file: the url is http"):
        parse_config(plain)


class Guarded:
    """A remote router that answers 401 to any token but `want`'s (as `auth` does)."""

    def __init__(self, inner: StubBackend, want: bytes) -> None:
        self.inner, self.want, self.refused = inner, want, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] == "http" and headers.get(b"authorization") != self.want:
            self.refused += 1
            body = b'{"error": {"message": "missing or wrong bearer token"}}'
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.inner(scope, receive, send)


def test_a_remote_refusing_the_routers_token_is_ejected_and_says_why(tmp_path: Path) -> None:
    """A remote tier answering 401 to the router's token_file (its Secret rotated on one
    side only) is failing, not the client's credential: the request goes elsewhere, the
    tier is ejected and the condition names the 401; its probe gets the 401 too and keeps
    it out, until the token is the right one again. (It was passed on: clients got 401s
    for a credential not theirs while BackendsReachable said AllReachable.)"""
    from perllm.router.status import reachable

    async def go() -> None:
        async with contextlib.AsyncExitStack() as st:
            edge, inner = StubBackend("edge"), StubBackend("remote")
            remote = Guarded(inner, b"Bearer new")
            urls = {
                "edge": await st.enter_async_context(serving(edge)),
                "remote": await st.enter_async_context(serving(remote)),
            }
            token = secret(tmp_path, "remote-token", "old")
            cfg = {
                "scenario": "demo",
                "service_class": "chat",
                "backends": [
                    backend("edge", urls["edge"], "edge"),
                    backend("remote", urls["remote"], "cloud", token_file=token),
                ],
                "limits": {"eject_s": 0.05, "eject_max_s": 0.1},
            }
            r = Router(parse_config(cfg))
            r._secrets[token]._every = 0.0  # (re-read at once when rotated)
            await r.start()
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
            for _ in range(6):
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-perllm-decision"].startswith("backend=edge")
            assert remote.refused >= 1 and inner.requests == 0
            ok, reason, message = reachable(r.backends, ["remote"], r.refusing())
            assert (ok, reason) == (False, "RemoteUnreachable")
            assert "HTTP 401, the router's token_file refused" in message
            errors = r.metrics.registry.get_sample_value(
                "perllm_router_upstream_errors_total", {"backend": "remote", "kind": "auth"}
            )
            assert errors and errors >= 1
            probed = remote.refused
            for _ in range(200):  # its probes get the 401 too: still out
                await asyncio.sleep(0.01)
                if remote.refused >= probed + 2:
                    break
            assert remote.refused >= probed + 2 and "remote" in r.refusing()
            Path(token).write_text("new\n")
            os.utime(token, (1, 1))
            for _ in range(300):
                await asyncio.sleep(0.01)
                if not r.refusing():
                    break
            assert not r.refusing() and inner.probes >= 1
            await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))
