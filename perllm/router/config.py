"""The router's configuration: the service it fronts, its backends and its limits.

A YAML file (`perllm router --config FILE`):

    service:            # an LLMService spec (perllm.contract.ServiceSpec), or:
    scenario: demo      # a scenario file or built-in name and one of its classes
    service_class: chat
    backends:
      - {name: edge-gpu-1, url: "http://10.0.0.5:8000", tier: edge, hardware: nvidia-l4,
         link: {bandwidth_mbps: 100, rtt_ms: 5}}
    shed: true          # 503 when no backend can meet the deadline

Backends are a static list or, with `discovery: {service: namespace/name}`, the ready pods
of an LLMService (`perllm.router.discovery`). A backend's `hardware` is a key of the
catalogue (the scenario's when a scenario is named); `bandwidth_mbps` is its measured link
bandwidth (default: the link's nominal bandwidth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from perllm.contract import (
    MAX_LINK_MBPS,
    MIN_LINK_MBPS,
    EnergyWeights,
    Link,
    Number,
    Server,
    ServiceSpec,
    Tier,
)
from perllm.csucb import CSUCBConfig
from perllm.profiles import Catalogue, default_catalogue
from perllm.telemetry.prom import PromAccess, PromAccessError
from perllm.urls import http_url_error, redact
from perllm.waits import MAX_WAIT_S, WaitSeconds
from perllm.yamlerror import load_strict, one_line


class RouterConfigError(ValueError):
    """A configuration the router cannot run with (file and field in the message)."""


class _Strict(BaseModel):
    # (inf passes a `> 0` check: a timeout of inf would hang a request, an interval of inf
    # stop a loop; every seconds field is also at most MAX_WAIT_S, through WaitSeconds)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Every number and flag of the config is strict, as a scenario's (perllm.contract.Number): a
# YAML "100" or `true` is refused naming its key instead of becoming 100 or 1 (`retries:
# true` retried once, `probe: "false"` turned probing off, `shed: 1` shed). A float field
# takes integers; a whole-number field takes integers only. Field by field: strict mode on a
# whole model would also refuse `tier: edge`, an enum written as its string.
Whole = Annotated[int, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Seconds = Annotated[WaitSeconds, Field(strict=True)]


class Backend(_Strict):
    """One replica of the service: an OpenAI-compatible model server."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    url: Annotated[str, Field(min_length=1, pattern=r"^https?://")]
    tier: Tier
    hardware: str = Field(description="Hardware key in the catalogue, e.g. nvidia-l4.")
    link: Link
    # Within a link's own bounds: 1e-300 made every upload take for ever in the estimate.
    bandwidth_mbps: Annotated[Number, Field(ge=MIN_LINK_MBPS, le=MAX_LINK_MBPS)] | None = Field(
        default=None, description="Measured link bandwidth (default: the link's nominal)."
    )
    model: str | None = Field(
        default=None, description="Model name the backend serves (rewritten into the body)."
    )
    node: str | None = Field(
        default=None, description="Node it runs on (discovery: its measured bandwidth)."
    )
    token_file: str | None = Field(
        default=None,
        description="File with the bearer token sent to this backend (a mounted Secret key, "
        "e.g. another cluster's router); replaces the client's authorization header.",
    )
    ca_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of the CAs that sign this https backend's certificate (a "
        "mounted Secret key, e.g. a private remote cluster's CA); default: the system's.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        """A host and a port in range: what the upstream pool connects to."""
        if why := http_url_error(v):  # a port out of range, a host no resolver answers
            raise ValueError(f"{redact(v)!r}: {why}")
        u = urlsplit(v)
        if u.username is not None or u.password is not None:  # (the URL is not echoed)
            raise ValueError(
                "user:password@ in the URL: never sent, and the URL is logged and written "
                "into the LLMService's status; give the credential in token_file"
            )
        return v

    @model_validator(mode="after")
    def _ca_for_https(self) -> Backend:
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file: the url is http, nothing is verified (use https)")
        return self

    def server(self) -> Server:
        return Server(name=self.name, tier=self.tier, hardware=self.hardware, link=self.link)

    @property
    def measured_mbps(self) -> float:
        return self.bandwidth_mbps or self.link.bandwidth_mbps


class Limits(_Strict):
    max_body_bytes: Annotated[Whole, Field(ge=1024)] = 8 * 2**20
    # Bytes of request bodies held at once, all requests together, from a body's first
    # byte until its request is answered (beyond: 503 body_budget; 0: none). Bodies are read
    # before a slot is taken: without it, each connection could hold max_body_bytes, and
    # the queue and the slots 1,280 of them (10 GiB by default).
    body_budget_bytes: Annotated[Whole, Field(ge=0)] = 128 * 2**20
    max_concurrency: Annotated[Whole, Field(ge=1)] = 256  # requests proxied at once
    max_queue: Annotated[Whole, Field(ge=0)] = 1024  # requests waiting for a slot
    queue_timeout_s: Seconds = 5.0
    connect_timeout_s: Seconds = 2.0
    read_timeout_s: Seconds = 60.0  # between two upstream chunks
    body_timeout_s: Seconds = 30.0  # a client's body, once its head came (+ allowance)
    # The listener's bound on reading any request (perllm.httpguard): head and body within
    # request_timeout_s of its first byte (or of the connection, before its first request),
    # plus 1 s per min_body_bytes_per_s bytes of body received (0: no allowance), else 408
    # and closed; heads over 64 KiB are 431. 60 s and 32 KiB/s (256 kbit/s): an upload at
    # that rate or faster is never cut, whatever its size (8 MiB: 316 s).
    request_timeout_s: Seconds = 60.0
    min_body_bytes_per_s: Annotated[Whole, Field(ge=0)] = 32 * 1024
    send_timeout_s: Seconds = 60.0  # a client's reading of one chunk of its answer
    # The whole upstream exchange, from sending to the answer's last byte: the timeouts
    # above bound each wait, not their sum, so a backend dripping a byte every minute held
    # a slot for good. An hour: far above a legitimate generation's length.
    total_timeout_s: Seconds = 3600.0
    # A backend refusing connections or not answering in time (the timeouts above) is
    # left out of decisions (perllm.router.health) for eject_s, doubling per consecutive
    # failure up to eject_max_s; a request not sent (connection refused or not accepted
    # in time) is decided again among the others up to `retries` times.
    eject_s: Seconds = 1.0
    eject_max_s: Seconds = 30.0
    retries: Annotated[Whole, Field(ge=0, le=8)] = 2
    # While a backend is ejected the router probes it itself (perllm.router.probe): a GET
    # of probe_path when its ejection ends, with the timeouts above; any answer re-admits
    # it, a failure ejects it again for twice as long. false: only the requests CS-UCB
    # decides there after its ejection find out whether it answers again.
    probe: Flag = True
    probe_path: Annotated[str, Field(pattern=r"^/[!-~]*$", max_length=1024)] = "/v1/models"

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> Limits:
        if 0 < self.body_budget_bytes < self.max_body_bytes:
            raise ValueError(
                f"body_budget_bytes ({self.body_budget_bytes}) below max_body_bytes "
                f"({self.max_body_bytes}): a body of that size would always be refused "
                "(0: no budget)"
            )
        return self


URL_FIELDS = ("ip", "port", "namespace", "pod", "node")  # a discovered pod's url_template
PROM_KEYS = {  # PromAccess' fields as discovery's keys (in its errors)
    "url": "prometheus",
    "token_file": "prometheus_token_file",
    "ca_file": "prometheus_ca_file",
    "insecure_skip_verify": "prometheus_insecure_skip_verify",
}


class Discovery(_Strict):
    """Backends from the cluster: the ready pods of one LLMService (docs/router.md)."""

    service: Annotated[str, Field(pattern=r"^[a-z0-9-]+/[a-z0-9.-]+$")] = Field(
        description="namespace/name of the LLMService."
    )
    url_template: str = Field(
        default="http://{ip}:{port}",
        description="A pod's URL: {ip} {port} {namespace} {pod} {node}.",
    )
    port: Annotated[Whole, Field(ge=1, le=65535)] = 8000  # without a containerPort
    interval_s: Seconds = 5.0
    timeout_s: Seconds = 5.0  # the kubernetes client's and Prometheus' sockets
    kubeconfig: str | None = None  # default: in-cluster, else ~/.kube/config
    prometheus: str | None = Field(
        default=None, description="Prometheus URL: measured bandwidth per node."
    )
    prometheus_token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File with a bearer token for Prometheus (a mounted Secret key).",
    )
    prometheus_ca_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of the CAs that sign an https Prometheus (default: the system's).",
    )
    prometheus_insecure_skip_verify: Flag = Field(
        default=False,
        description="Do not verify an https Prometheus' certificate (its token goes to anyone).",
    )
    status_interval_s: Annotated[Number, Field(ge=0, le=MAX_WAIT_S)] = Field(
        default=5.0,
        description="Seconds between writes of the LLMService's status.routing and "
        "BackendsReachable condition (when changed); 0: never written.",
    )

    @field_validator("url_template")
    @classmethod
    def _template(cls, v: str) -> str:
        """Only the documented placeholders, plain: an unknown one (or `{ip.attr}`,
        `{0}`) failed every discovery round with a bare KeyError, the router left with no
        backends."""
        import string

        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v)]
        except ValueError as e:
            raise ValueError(f"{v!r}: {e}") from None
        for f, spec, conv in parts:
            if f is not None and (f not in URL_FIELDS or spec or conv):
                whole = f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ValueError(f"{v!r}: unknown placeholder {{{whole}}}; known: {URL_FIELDS}")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r}: not an http(s) URL")
        return v

    def prometheus_access(self) -> PromAccess:
        """The prometheus* keys, as the client takes them (checked with the file)."""
        return PromAccess(
            self.prometheus,
            self.prometheus_token_file,
            self.prometheus_ca_file,
            self.prometheus_insecure_skip_verify,
            self.timeout_s,
        )

    @model_validator(mode="after")
    def _prometheus_access(self) -> Discovery:
        try:
            self.prometheus_access()
        except PromAccessError as e:
            raise ValueError(e.named(PROM_KEYS)) from None
        return self


class Auth(_Strict):
    token_file: str = Field(
        min_length=1,
        description="File with the bearer token clients must send (a mounted Secret key).",
    )


class RouterConfig(_Strict):
    service: ServiceSpec | None = None
    scenario: str | None = None
    service_class: str | None = None
    backends: list[Backend] = Field(default_factory=list)
    discovery: Discovery | None = None
    shed: Flag = Field(
        default=False,
        description="Answer 503 when no backend can meet the deadline (else: least violating).",
    )
    models: list[str] = Field(
        default_factory=list, description="Model names accepted (default: model and name)."
    )
    weights: EnergyWeights = EnergyWeights()
    # (inf is meaningful there, e.g. memory: inf, no forgetting; CSUCBConfig checks them)
    csucb: dict[str, Annotated[Number, Field(allow_inf_nan=True)]] = Field(
        default_factory=dict, description="CSUCBConfig fields."
    )
    limits: Limits = Limits()
    auth: Auth | None = Field(
        default=None, description="Require a bearer token on /v1/* (else: no client auth)."
    )

    @model_validator(mode="after")
    def _one_service(self) -> RouterConfig:
        if self.service is not None and self.scenario is not None:
            raise ValueError("give either service or scenario (+ service_class), not both")
        if self.service is None and self.scenario is None and self.discovery is None:
            raise ValueError(
                "give service, scenario (+ service_class), or discovery (the LLMService's "
                "spec is then read from the cluster)"
            )
        if self.scenario is not None and not self.service_class:
            raise ValueError("service_class: required with scenario")
        if not self.backends and self.discovery is None:
            raise ValueError("backends: give a static list or discovery")
        names = [b.name for b in self.backends]
        if len(names) != len(set(names)):
            raise ValueError("backends: names must be unique")
        return self

    def resolve(self) -> tuple[ServiceSpec, Catalogue]:
        """The service and the catalogue its backends' hardware keys refer to."""
        if self.service is not None:
            cat = default_catalogue()
            spec = self.service
        elif self.scenario is None:
            raise RouterConfigError(
                "service: not given (with discovery alone the router reads it from the "
                "LLMService: perllm.router.discovery)"
            )
        else:
            from perllm.scenario import ScenarioError, load_scenario

            assert self.scenario is not None
            try:
                sc = load_scenario(self.scenario)
            except ScenarioError as e:
                raise RouterConfigError(f"scenario: {e}") from None
            cat = sc.catalogue
            found = [s for s in sc.services() if s.name == self.service_class]
            if not found:
                known = [c.name for c in sc.workload.classes]
                raise RouterConfigError(
                    f"service_class: {self.service_class!r} not in {self.scenario} ({known})"
                )
            spec = found[0]
        if spec.model not in cat.models:
            raise RouterConfigError(f"service.model: unknown model {spec.model!r}")
        for b in self.backends:
            if b.hardware not in cat.hardware:
                raise RouterConfigError(
                    f"backends[{b.name}].hardware: unknown hardware {b.hardware!r}; "
                    f"known: {sorted(cat.hardware)}"
                )
        return spec, cat

    def model_names(self, spec: ServiceSpec) -> set[str]:
        return set(self.models) if self.models else {spec.model, spec.name}

    def csucb_config(self) -> CSUCBConfig:
        try:
            return CSUCBConfig(**self.csucb)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise RouterConfigError(f"csucb: {e}") from None


def parse_config(data: Any, source: str = "<config>") -> RouterConfig:
    from pydantic import ValidationError

    try:
        return RouterConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        # A check of ours (a ValueError) reads as its message, without pydantic's prefix; a
        # model-level one has no location and names its field itself ("backends: …").
        msg = first["msg"].removeprefix("Value error, ")
        raise RouterConfigError(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}") from None


def load_config(path: str | Path) -> RouterConfig:
    if not str(path).strip():  # Path("") is ".": "cannot read: Is a directory"
        raise RouterConfigError("the config path must not be empty: give a router YAML file")
    p = Path(path)
    try:
        data = load_strict(p.read_text())
    except OSError as e:
        raise RouterConfigError(f"{p}: {e}") from None
    except UnicodeDecodeError as e:
        raise RouterConfigError(f"{p}: not a text file: {e}") from None
    except yaml.YAMLError as e:
        raise RouterConfigError(f"{p}: not valid YAML: {one_line(e)}") from None
    return parse_config(data, str(p))
