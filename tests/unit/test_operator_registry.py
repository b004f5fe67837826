"""The operator's kopf registry is built from a config, not populated on import: two
operators built from two configs share no state, and importing the package does nothing."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
from perllm_operator import registry, status
from perllm_operator.config import Config
from perllm_operator.policy import Point, ReplacementPolicy
from perllm_operator.state import state_of

from perllm.telemetry.prom import PromAccess

ROOT = Path(__file__).parents[2]


def _handlers(reg: kopf.OperatorRegistry) -> dict[str, Any]:
    """Handler id -> handler, across the sub-registries the operator uses."""
    subs = (reg._activities, reg._watching, reg._spawning, reg._changing)
    return {str(h.id): h for sub in subs for h in sub.get_all_handlers()}


def test_registry_holds_every_handler_under_its_id() -> None:
    hs = _handlers(registry.build_registry(Config(status_interval_s=7)))
    want = {
        "login",
        "configure",
        "reconcile",
        "deployment_event",
        "forget",
        "status_tick",
        "telemetry",
    }
    assert want <= set(hs)
    tick = hs["status_tick"]
    assert tick.interval == 7 and tick.sharp is False and tick.initial_delay == 5.0
    assert hs["forget"].requires_finalizer is False  # optional: no finalizer of its own


def test_two_operators_share_no_state() -> None:
    a = registry.build(Config(PromAccess("http://a:9090"), status_interval_s=2))
    b = registry.build(
        Config(PromAccess(None), status_interval_s=45, policy=ReplacementPolicy(False))
    )
    assert a.registry is not b.registry
    assert _handlers(a.registry)["status_tick"].interval == 2
    assert _handlers(b.registry)["status_tick"].interval == 45
    sa, sb = state_of(a.memo), state_of(b.memo)
    assert sa.config.prometheus.url == "http://a:9090" and sb.config.policy.enabled is False
    assert sa.prom is not sb.prom and sa.prom.url == "http://a:9090" and sb.prom.url is None
    sa.history["uid-1"].append(Point(0.0, 0.5))
    sa.prom.health.last_error = "refused"
    assert "uid-1" not in sb.history and sb.prom.health.last_error is None
    # Each probe reports its own operator's Prometheus, through its own memo.
    assert status.telemetry_probe(memo=a.memo)["prometheus"] == "http://a:9090"
    assert status.telemetry_probe(memo=b.memo)["prometheus"] is None
    assert status.telemetry_probe(memo=a.memo)["lastError"] == "refused"
    # kopf hands each object a shallow copy of the root memo: the same State.
    assert state_of(copy.copy(a.memo)) is sa


IMPORT_ALL = """
import importlib, os, pkgutil, sys
from collections.abc import MutableMapping
import kopf, kubernetes, perllm.crd, perllm.telemetry.prom  # third-party and core first

class Recording(MutableMapping):  # any read of the environment is recorded
    read: set[str] = set()
    def __init__(self, env): self.env = dict(env)
    def __getitem__(self, k): Recording.read.add(k); return self.env[k]
    def __iter__(self): Recording.read.add("*"); return iter(self.env)
    def __len__(self): return len(self.env)
    def __setitem__(self, k, v): self.env[k] = v
    def __delitem__(self, k): del self.env[k]

os.environ = Recording(os.environ)
import perllm_operator
for m in pkgutil.iter_modules(perllm_operator.__path__):
    if m.name != "__main__":
        importlib.import_module(f"perllm_operator.{m.name}")
ours = [h for h in kopf.get_default_registry()._activities.get_all_handlers()
        if h.fn.__module__.startswith("perllm_operator")]
subs = ("_watching", "_spawning", "_changing", "_indexing", "_webhooks")
other = [h for s in subs for h in getattr(kopf.get_default_registry(), s).get_all_handlers()]
read = sorted(k for k in Recording.read if k.startswith("PERLLM") or k == "*")
print(read, len(ours), len(other))
"""


def test_importing_the_package_has_no_side_effects() -> None:
    env = dict(
        os.environ,
        PERLLM_STATUS_INTERVAL="not-a-number",  # would raise if anything read it on import
        PERLLM_PROMETHEUS_URL="http://x:9090",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),  # this test's imports
    )
    r = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "0", "0"]  # no PERLLM_* (nor all) read, no handler
