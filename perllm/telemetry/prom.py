"""Prometheus instant queries with a timeout, a last-good cache and a staleness clock.

Built on prometheus-api-client. A failed query never raises to the caller: it returns
the last good answer for the same query (marked stale) or None, and the client records
why, so callers degrade visibly (a condition, a metric) instead of crashing or hanging.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from perllm.secrets import SecretFile
from perllm.urls import http_url_error, redact

log = logging.getLogger("perllm.telemetry")
MAX_ERROR = 500  # characters of a failure's reason kept (logs, /readyz, conditions)
MAX_ANSWER = 32 * 2**20  # bytes of one answer (a query here returns kilobytes)


class PromAccessError(ValueError):
    """Settings of a `PromAccess` that cannot hold: `fields`, its attributes, for each
    component to name as its users spell them (`named`)."""

    def __init__(self, fields: tuple[str, ...], why: str) -> None:
        self.fields, self.why = fields, why
        super().__init__(f"{', '.join(fields)}: {why}")

    def named(self, names: Mapping[str, str]) -> str:
        """The reason under the component's names of the fields (env, flag, YAML key)."""
        return f"{', '.join(names.get(f, f) for f in self.fields)}: {self.why}"


@dataclass(frozen=True)
class PromAccess:
    """How a component reaches Prometheus (see `Prometheus`), checked once, whichever way
    it was given (environment, flags, YAML): what the components keep and pass on."""

    url: str | None = None  # None: no Prometheus configured
    token_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.url is not None and (why := http_url_error(self.url)):
            # (else every query failed, each time, as a connection error naming no setting)
            raise PromAccessError(("url",), f"{redact(self.url)!r}: {why}")
        if self.ca_file is not None and not self.ca_file:
            raise PromAccessError(("ca_file",), "the CA file is an empty path")
        if self.ca_file and self.insecure_skip_verify:
            raise PromAccessError(
                ("ca_file", "insecure_skip_verify"),
                "a CA file and skipping verification exclude each other: choose one",
            )

    def client(self) -> Prometheus:
        return Prometheus(
            self.url, self.timeout_s, self.token_file, self.ca_file, self.insecure_skip_verify
        )


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Answer:
    samples: list[Sample]
    fresh: bool  # False: served from the last-good cache after a failure
    at: float  # time.time() of the successful query it came from

    def by(self, label: str) -> dict[str, float]:
        """value per value of `label` (samples without it are skipped; NaN dropped)."""
        return {
            s.labels[label]: s.value
            for s in self.samples
            if label in s.labels and math.isfinite(s.value)
        }

    def by_any(self, labels: tuple[str, ...] | list[str]) -> dict[str, float]:
        """value per value of whichever of `labels` a sample carries (exporters that spell
        one label two ways, e.g. DCGM's `Hostname`/`hostname`); a later label wins a tie."""
        out: dict[str, float] = {}
        for label in labels:
            out.update(self.by(label))
        return out

    def by_pair(self, outer: str = "namespace", inner: str = "pod") -> dict[str, float]:
        """value per "<outer>/<inner>" (e.g. "namespace/pod"); samples missing either label
        or with a non-finite value are skipped."""
        out: dict[str, float] = {}
        for s in self.samples:
            a, b = s.labels.get(outer), s.labels.get(inner)
            if a and b and math.isfinite(s.value):
                out[f"{a}/{b}"] = s.value
        return out

    def scalar(self) -> float | None:
        vals = [s.value for s in self.samples if math.isfinite(s.value)]
        return vals[0] if vals else None


@dataclass
class Health:
    ok: bool = False
    last_success: float | None = None  # time.time()
    last_error: str | None = None
    failures: int = 0

    def staleness_s(self, now: float | None = None) -> float:
        """Seconds since the last successful query (inf: never)."""
        if self.last_success is None:
            return math.inf
        return max(0.0, (now or time.time()) - self.last_success)


@dataclass
class Prometheus:
    """`Prometheus(url)`; `url=None` means no Prometheus is configured (every query None).
    `token_file`: a file holding a bearer token sent with every query (a mounted Secret key
    or a projected service-account token, for a Prometheus behind authentication), re-read
    when it changes; unreadable or empty, every query fails with a reason naming the file.
    An https Prometheus is verified against the system's CAs, or `ca_file` (a PEM bundle:
    an in-cluster CA); `insecure_skip_verify` turns verification off (said once in the
    log: a bearer token then goes to whoever answers)."""

    url: str | None
    timeout_s: float = 2.0
    token_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    cache_size: int = 512
    health: Health = field(default_factory=Health)
    _cache: dict[str, Answer] = field(default_factory=dict, repr=False)
    _client: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _connect(self) -> Any:
        if self._client is None:
            from prometheus_api_client import PrometheusConnect
            from urllib3.util.retry import Retry

            from perllm.telemetry.bounded import BoundedAnswers, BoundedSession

            # No retries: the caller's loop is the retry, and a scheduler must not wait.
            # (retry=None would mean the library's default: 3 retries with backoff, ~6 s.)
            retry = Retry(total=0, raise_on_status=False)
            session = BoundedSession(self.timeout_s)  # one deadline for a query's redirects
            session.verify = self._verify()
            # (SecretError, naming the file, fails this query; the next one tries again)
            auth = _Bearer(SecretFile(self.token_file)) if self.token_file else None
            session.hooks["response"].append(_check_answer)
            self._client = PrometheusConnect(
                url=self.url,
                disable_ssl=session.verify is False,
                retry=retry,
                timeout=self.timeout_s,
                session=session,
                auth=auth,
            )
            # Mounted after the library's own adapter for the same prefix, so it replaces it;
            # and for every other URL, so that a redirect (http:// on to https://, another
            # host) is bounded too, not read by requests' default adapter.
            assert self.url is not None
            bounded = BoundedAnswers(self.timeout_s, MAX_ANSWER, retry)
            for prefix in (self.url, "http://", "https://"):
                session.mount(prefix, bounded)
        return self._client

    def _verify(self) -> bool | str:
        """requests' `verify`: a CA bundle's path, True (system CAs) or False."""
        if self.insecure_skip_verify:
            if (self.url or "").startswith("https:"):
                log.warning(
                    "Prometheus %s: TLS certificate not verified (insecure_skip_verify)",
                    redact(self.url or ""),
                )
            return False
        return self.ca_file or True

    def query(self, promql: str) -> Answer | None:
        if not self.url:
            self._fail("no Prometheus URL configured")
            return None
        try:
            samples = _samples(self._connect().custom_query(promql))
        except Exception as e:  # connection refused, timeout, non-200, bad JSON, no vector
            self._fail(f"{type(e).__name__}: {e}")
            with self._lock:
                hit = self._cache.get(promql)
            return Answer(hit.samples, False, hit.at) if hit is not None else None
        now = time.time()
        ans = Answer(samples, True, now)
        with self._lock:
            self._cache[promql] = ans
            while len(self._cache) > self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self.health.ok, self.health.last_success = True, now
            self.health.last_error, self.health.failures = None, 0
        return ans

    def _fail(self, why: str) -> None:
        password = urlsplit(self.url).password if self.url else None
        if password:  # an invalid-URL error quotes the URL
            why = why.replace(password, "***")
        if len(why) > MAX_ERROR:  # a non-200's exception carries the whole body
            why = f"{why[:MAX_ERROR]}... ({len(why)} characters)"
        with self._lock:
            first = self.health.ok or self.health.failures == 0
            self.health.ok, self.health.last_error = False, why
            self.health.failures += 1
        if first:  # say it once per outage, not once per query
            log.warning("Prometheus %s unreachable: %s", redact(self.url or ""), why)


def _check_answer(resp: Any, *args: Any, **kwargs: Any) -> Any:
    """requests' response hook: a 200 that is no successful query result fails naming why,
    with Prometheus' own errorType and error. The client indexes ["data"]["result"] blindly,
    so "status": "error" (a proxy, a Prometheus-compatible store) read as KeyError: 'data'."""
    if resp.status_code != 200:
        return resp  # the client's own error names the status
    try:
        body = resp.json()
    except ValueError:
        return resp  # not JSON: the client's JSONDecodeError says so
    if not isinstance(body, dict):
        raise ValueError(f"the answer is a JSON {type(body).__name__}, not Prometheus' object")
    if body.get("status") != "success":
        detail = ": ".join(str(body[k]) for k in ("errorType", "error") if body.get(k))
        raise ValueError(
            f"Prometheus answered 200 with status {body.get('status')!r}: "
            f"{detail or 'no error given'}"
        )
    data = body.get("data")
    if not isinstance(data, dict) or "result" not in data:
        raise ValueError("the answer has no data.result (not Prometheus' /api/v1/query?)")
    return resp


def _samples(raw: Any) -> list[Sample]:
    """The samples of an answer's result; ValueError when it is not a vector (a garbled
    answer is a failed query, never an exception out of `query`)."""
    if not isinstance(raw, list):
        raise ValueError(f"result is a {type(raw).__name__}, not a list")
    return [_sample(r) for r in raw if isinstance(r, dict)]


def _value(raw: Any) -> float:
    """A sample's [time, "number"] (Prometheus writes "1.5", "NaN", "+Inf"); any other
    shape is no number (NaN, dropped by the readers), not whatever float() makes of it."""
    if not isinstance(raw, list) or len(raw) != 2:
        return math.nan
    v = raw[1]
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        return math.nan
    try:
        return float(v)
    except ValueError:
        return math.nan


def _sample(r: dict[str, Any]) -> Sample:
    v = _value(r.get("value"))
    metric = r.get("metric") or {}
    if not isinstance(metric, dict):
        raise ValueError(f"a sample's metric is a {type(metric).__name__}, not an object")
    return Sample({str(k): str(x) for k, x in metric.items()}, v)


class _Bearer:
    """requests' auth hook: the token file's current value on every query (rotation)."""

    def __init__(self, secret: SecretFile) -> None:
        self.secret = secret

    def __call__(self, r: Any) -> Any:
        r.headers["Authorization"] = self.secret.bearer().decode("latin-1")
        return r
