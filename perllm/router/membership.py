"""The router's backends: a membership snapshot (`Members`) that can be replaced while
requests are in flight (`set_backends`, fed by `perllm.router.discovery`): a request keeps
the snapshot it was decided in, and CS-UCB's learned statistics are shared by all
snapshots. Backends that refuse connections or do not answer in time are left out of
decisions for a while (`perllm.router.health`): decisions then run on the snapshot
without them (`_live`), and once their ejection is over the health probe
(`perllm.router.probe`) asks them whether they answer again (`due`, `probed`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from perllm.contract import ServiceSpec
from perllm.csucb.pooled_scores import kernels_available
from perllm.profiles import Catalogue, default_catalogue
from perllm.router.asgi import Refused
from perllm.router.config import Backend, RouterConfig
from perllm.router.decision import Backlog, Decider
from perllm.router.health import Ejections, Refusing
from perllm.router.members import Members, decider_key
from perllm.router.metrics import RouterMetrics
from perllm.router.probe import Prober, tick_s
from perllm.router.upstream import Pool
from perllm.secrets import CaFile, SecretError, SecretFile

log = logging.getLogger("perllm.router")


class Membership:
    def __init__(self, config: RouterConfig, metrics: RouterMetrics) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        # The service the deciders are for (`Router.set_spec`); None until it is known.
        self.spec: ServiceSpec | None = None
        self.catalogue: Catalogue = default_catalogue()
        self._inflight: dict[str, Backlog] = {}  # per backend name, across memberships
        self._leaving: set[str] = set()  # not members any more, requests still in flight
        self._bw_override: dict[str, float] = {}
        self._pools: dict[tuple[str, str, str | None], Pool] = {}
        self._members: Members | None = None
        self._stats: Any = None  # CS-UCB's ArmStats, shared across memberships
        self._eject = Ejections(self.limits.eject_s, self.limits.eject_max_s)
        # The health probe (perllm.router.probe; started and stopped with the app): while
        # it runs, a failing backend stays out until it answers that probe. `probing`:
        # those with a probe in flight.
        self.probing: set[str] = set()
        self.prober: Prober | None = None
        if self.limits.probe:
            self.prober = Prober(self, self.limits.probe_path, tick_s(self.limits.eject_s))
        self._secrets: dict[str, SecretFile] = {}
        self._clear: set[str] = set()  # backends warned of a token sent over plain http
        self._cas: dict[str, CaFile] = {}  # per ca_file: read again when it changes
        # Static backends (remote tiers) stay members beside the discovered pods.
        self.static = list(config.backends) if config.discovery is not None else []
        # The membership without its ejected backends, per ejected set (same statistics).
        self._without: dict[frozenset[str], tuple[Members, list[int]]] = {}
        self._warming: asyncio.Task[None] | None = None
        self.serving = False  # started (`Router.start`): it warms what it starts with

    @property
    def backends(self) -> list[Backend]:
        return self._members.backends if self._members else []

    @property
    def members(self) -> Members | None:
        """The current membership (None: no backends yet)."""
        return self._members

    @property
    def decider(self) -> Decider:
        if self._members is None:
            raise RuntimeError("no backends yet")
        return self._members.decider

    @property
    def inflight(self) -> list[int]:
        """Requests in flight per current backend (in `backends` order)."""
        names = self._members.names if self._members else []
        return [len(self._inflight[n]) if n in self._inflight else 0 for n in names]

    def backlog(self, name: str) -> Backlog:
        """The requests in flight at backend `name` (any membership it was in)."""
        return self._inflight.setdefault(name, Backlog())

    def set_backends(self, backends: Sequence[Backend]) -> bool:
        """Replace the membership (discovery). Same backends with other bandwidths: only
        the bandwidths change; otherwise a new decider over the new set, learning into the
        same CS-UCB statistics. Returns whether the membership changed."""
        backends = sorted(backends, key=lambda b: b.name)
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {names}")
        # Backends that left: forgotten once nothing is in flight there (pod names change
        # at each rollout), now or when their last request ends (`drained`).
        keep = set(names)
        self._leaving -= keep
        for n in [n for n in self._inflight if n not in keep]:
            if len(self._inflight[n]):
                self._leaving.add(n)
            else:
                self._retire(n)
        m = self._members
        if m is not None and [decider_key(b) for b in m.backends] == [
            decider_key(b) for b in backends
        ]:
            m.backends = backends
            for j, b in enumerate(backends):
                m.bw[j] = self._bw_override.get(b.name, b.measured_mbps)
            return False
        self._without.clear()
        self._eject.forget(names)
        if not backends:
            self._members = None
            log.warning("no backends: requests are answered 503 until some are ready")
            return m is not None
        self.catalogue_check(backends)
        decider = self._decider_for(backends)
        pools = []
        for b in backends:
            key = (b.name, b.url, b.ca_file)
            if key not in self._pools:
                self._pools[key] = Pool(
                    b.url, self.limits.connect_timeout_s, self.limits.read_timeout_s,
                    self.limits.max_concurrency, self._ca(b.name, b.ca_file),
                )  # fmt: skip
            pools.append(self._pools[key])
        live = {(b.name, b.url, b.ca_file) for b in backends}
        for key in [k for k in self._pools if k not in live]:
            self._pools.pop(key).close()  # in-flight ones finish, then are closed too
        self._members = Members(
            backends,
            names,
            decider,
            pools,
            np.array([self._bw_override.get(b.name, b.measured_mbps) for b in backends], float),
            [self.metrics.backend(b.name, b.tier.value) for b in backends],
            [self._secret(b.token_file) if b.token_file else None for b in backends],
        )
        for n in names:
            self._inflight.setdefault(n, Backlog())
        log.info("backends: %s", ", ".join(f"{b.name}={b.url}" for b in backends))
        for b in backends:  # (allowed: a VPN or a mesh may carry it; said once a backend)
            if b.token_file and b.url.startswith("http:") and b.name not in self._clear:
                self._clear.add(b.name)
                log.warning(
                    "backend %s: its token_file goes in clear over %s (no TLS); use https "
                    "(ca_file for a private CA) unless the path is encrypted otherwise",
                    b.name,
                    b.url,
                )
        if decider.bandit.pooled and self.serving:  # (before: `Router.start` warms)
            with contextlib.suppress(RuntimeError):  # (no loop: the next request loads it)
                self._warming = asyncio.get_running_loop().create_task(self.warm())
        return True

    async def warm(self) -> None:
        """Load the pooled path's compiled loop (`kernels_available`) off the event loop
        where the membership is large enough to take it (`CSUCB.pooled`): on first use it
        takes a few seconds, which would stall the first request and every one behind it."""
        m = self._members
        if m is not None and m.decider.bandit.pooled:
            await asyncio.to_thread(kernels_available)

    def _retire(self, name: str) -> None:
        """Forget a backend that left and has nothing in flight: its load, its measured
        bandwidth and its metrics' series (its pool was closed, its ejection forgotten,
        when it left)."""
        self._inflight.pop(name, None)
        self._leaving.discard(name)
        self._bw_override.pop(name, None)  # (a returning pod has its next measurement)
        self.metrics.retire(name)

    def drained(self, name: str) -> None:
        """The last request in flight at `name` ended: retired if it left meanwhile."""
        if name in self._leaving:
            self._retire(name)

    def _secret(self, path: str) -> SecretFile:
        from perllm.router.config import RouterConfigError

        if path not in self._secrets:
            try:
                self._secrets[path] = SecretFile(path)
            except SecretError as e:
                raise RouterConfigError(f"token_file: {e}") from None
        return self._secrets[path]

    def _ca(self, name: str, path: str | None) -> Callable[[], ssl.SSLContext] | None:
        """What gives the TLS context verifying against `path`'s CAs, as they are now
        (None: the pool's default). Missing, unreadable or without a certificate at
        first use: a config error; later, the last good CAs stay in use (`ca_errors`)."""
        from perllm.router.config import RouterConfigError

        if path is None:
            return None
        if path not in self._cas:
            try:
                self._cas[path] = CaFile(path)
            except SecretError as e:
                raise RouterConfigError(f"backends[{name}].ca_file: {e}") from None
        return functools.partial(self._ca_context, self._cas[path])

    def _ca_context(self, ca: CaFile) -> ssl.SSLContext:
        """`ca`'s context, said once in the log when it cannot be read again (and when it
        can again: `ca_errors` says it meanwhile)."""
        was, ctx = ca.error, ca.current()
        if ca.error != was:
            if ca.error:
                log.warning("ca_file not read again, the last good CAs are in use: %s", ca.error)
            else:
                log.info("ca_file %s: read again", ca.path)
        return ctx

    def ca_errors(self) -> dict[str, str]:
        """Members whose `ca_file` cannot be read again now (unreadable, or no certificate
        in it), with why: the last good CAs verify them meanwhile."""
        m = self._members
        out = {}
        for b in m.backends if m is not None else []:
            ca = self._cas.get(b.ca_file) if b.ca_file else None
            if ca is not None:
                self._ca_context(ca)  # (checks the file, at most every `every_s`)
                if ca.error:
                    out[b.name] = ca.error
        return out

    def _decider_for(self, backends: Sequence[Backend]) -> Decider:
        """A decider over `backends`, learning into the router's one set of statistics."""
        assert self.spec is not None, "no service spec yet"
        decider = Decider.for_servers(
            [self.spec],
            [b.server() for b in backends],
            self.catalogue,
            self.config.weights,
            None if self._stats is not None else self.config.csucb_config(),
            self._stats,
        )
        self._stats = decider.bandit.stats
        return decider

    def _live(self, m: Members) -> Members | None:
        """`m` without its ejected backends (None: all are); the subset shares the pools,
        metrics and statistics, and reads the current bandwidths."""
        out = self._eject.out(m.names, self._busy)
        if not out:
            return m
        if len(out) == len(m.names):
            return None
        if out not in self._without:
            keep = [j for j, n in enumerate(m.names) if n not in out]
            sub = Members(
                [m.backends[j] for j in keep],
                [m.names[j] for j in keep],
                self._decider_for([m.backends[j] for j in keep]),
                [m.pools[j] for j in keep],
                m.bw[keep],
                [m.metrics[j] for j in keep],
                [m.tokens[j] for j in keep],
            )
            self._without[out] = (sub, keep)
        sub, keep = self._without[out]
        sub.bw[:] = m.bw[keep]
        return sub

    def _refused(self, e: Refused) -> None:
        self._failed(e.backend, e.message, e.timeout, e.answered)

    def timed_out(self, name: str, why: str) -> None:
        """A request sent to `name` got no answer in time (no response head, or the
        answer stalled): the next ones go elsewhere for a while (not this one: it may
        have reached the backend)."""
        self._failed(name, why, timeout=True)

    def unanswered(self, name: str, why: str) -> None:
        """A request sent to `name` got no answer: the connection closed before one, or
        what came was no HTTP response. Ejected as refusing connections (the next ones go
        elsewhere; not this one: it may have reached the backend)."""
        self._failed(name, why, timeout=False)

    def _failed(self, name: str, why: str, timeout: bool, answered: bool = False) -> None:
        if self._members is None or name not in self._members.names:
            return  # it left since the decision: nothing to leave out
        cooldown = self._eject.refused(name, why, timeout, answered)
        self.metrics.ejected.labels(name).set(1)
        log.warning("%s; left out of decisions for %.3gs", why, cooldown)

    def answered(self, name: str) -> None:
        """`name` answered a request (in time): not ejected any more."""
        if self._eject.answered(name):
            self.metrics.ejected.labels(name).set(0)

    def due(self) -> list[tuple[str, Pool, SecretFile | None]]:
        """Members failing whose ejection is over and with nothing in flight (no request
        there, no probe): each with its pool and the token sent to it, due for a probe."""
        m = self._members
        if m is None:
            return []
        out = []
        for n in self._eject.ended(m.names):
            if n not in self.probing and not self._inflight.get(n):
                j = m.names.index(n)
                out.append((n, m.pools[j], m.tokens[j]))
        return out

    def probed(
        self, name: str, failure: str = "", timeout: bool = False, answered: bool = False
    ) -> None:
        """The outcome of `name`'s health probe: answered (no `failure`), it is decided
        on again; else ejected again for longer, as by a refused (`timeout`: a timed-out;
        `answered`: one answered with a refusal) request. Nothing for a backend that left
        meanwhile."""
        if self._members is None or name not in self._members.names:
            return
        result = "timeout" if failure and timeout else "refused" if failure else "answered"
        self.metrics.probes.labels(name, result).inc()
        if failure:
            self._failed(name, failure, timeout, answered)
        elif self._eject.answered(name, probe=True):
            self.metrics.ejected.labels(name).set(0)
            log.info("backend %s answers its probe: decided on again", name)

    def refusing(self) -> dict[str, Refusing]:
        """Members refusing connections or not answering in time, and not answered since
        (the `perllm_router_backend_ejected` ones), with why: what the LLMService's
        status reports."""
        names = set(self._members.names) if self._members else set()
        return {n: r for n, r in self._eject.refusing().items() if n in names}

    def why_down(self) -> str:
        """Why every member is out of decisions (503 `backends_down`, /readyz): how many
        fail which way, by name; never the failures' messages, which name addresses (the
        log and the LLMService's condition have them)."""
        names = self._members.names if self._members else []
        failing = self.refusing()
        ways: dict[str, list[str]] = {}
        for n in names:
            f = failing.get(n)
            ways.setdefault(f.ways if f is not None else "left out", []).append(n)
        said = ", ".join(f"{len(v)} {w} ({', '.join(v)})" for w, v in ways.items())
        return f"every backend is left out of decisions: {said}"

    def down(self) -> list[str]:
        """Backends left out of decisions now (refused connections, or timed out)."""
        return sorted(self._eject.out(self._members.names, self._busy)) if self._members else []

    def _busy(self, name: str) -> bool:
        """Whether `name`, failing and its ejection over, stays out of decisions: while
        the health probe runs, until it answers that; else while requests are in flight
        there (the first of them is its probe)."""
        p = self.prober
        return (p is not None and p.running) or bool(self._inflight.get(name))

    def catalogue_check(self, backends: Sequence[Backend]) -> None:
        from perllm.router.config import RouterConfigError

        for b in backends:
            if b.hardware not in self.catalogue.hardware:
                raise RouterConfigError(
                    f"backends[{b.name}].hardware: unknown hardware {b.hardware!r}; "
                    f"known: {sorted(self.catalogue.hardware)}"
                )

    def set_bandwidth(self, backend: str, mbps: float) -> None:
        """A backend's measured link bandwidth (Prometheus); kept across memberships."""
        self._bw_override[backend] = mbps
        m = self._members
        if m is not None and backend in m.names:
            m.bw[m.names.index(backend)] = mbps
