"""Operator settings: the documented environment variables, overridden by the command-line
flags, validated before kopf starts. The entry point reads them once and hands the
`Config` to `registry.build`; nothing reads the environment at import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from perllm.labels import decimal
from perllm.telemetry.prom import PromAccess, PromAccessError
from perllm_operator.policy import ReplacementPolicy

ENV_PROMETHEUS = "PERLLM_PROMETHEUS_URL"
ENV_PROMETHEUS_TOKEN = "PERLLM_PROMETHEUS_TOKEN_FILE"  # a bearer token for Prometheus
ENV_PROMETHEUS_CA = "PERLLM_PROMETHEUS_CA_FILE"  # PEM CAs that sign an https Prometheus
ENV_PROMETHEUS_INSECURE = "PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY"  # "true": no TLS check
ENV_STATUS_INTERVAL = "PERLLM_STATUS_INTERVAL"
ENV_TELEMETRY_WINDOW = "PERLLM_TELEMETRY_WINDOW"
ENV_REPLACE = "PERLLM_REPLACEMENT"  # "on" | "off"
ENV_REPLACE_WINDOW = "PERLLM_REPLACEMENT_WINDOW"
ENV_REPLACE_TICKS = "PERLLM_REPLACEMENT_TICKS"
ENV_REPLACE_COOLDOWN = "PERLLM_REPLACEMENT_COOLDOWN"
ENV_REPLACE_ESCALATE = "PERLLM_REPLACEMENT_ESCALATE_AFTER"
PROM_NAMES = {  # PromAccess' fields as the environment spells them (in its errors)
    "url": ENV_PROMETHEUS,
    "token_file": ENV_PROMETHEUS_TOKEN,
    "ca_file": ENV_PROMETHEUS_CA,
    "insecure_skip_verify": ENV_PROMETHEUS_INSECURE,
}


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable."""


def _float(env: Mapping[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:  # a plain decimal, as in annotations ("1_0" or " 5 " were read by float())
        v = decimal(raw)
    except ValueError as e:  # (NaN compared False to everything: no interval, no cooldown)
        raise ConfigError(f"{key}={raw!r}: {e}") from None
    if v < minimum:
        raise ConfigError(f"{key}={raw!r}: must be >= {minimum:g}")
    return v


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    v = _float(env, key, float(default), float(minimum))
    if not v.is_integer():
        raise ConfigError(f"{key}={env.get(key)!r}: must be a whole number")
    return int(v)


@dataclass(frozen=True)
class Config:
    prometheus: PromAccess = field(default_factory=PromAccess)
    status_interval_s: float = 30.0
    telemetry_window: str = "5m"  # PromQL range of the rate() queries
    policy: ReplacementPolicy = field(default_factory=ReplacementPolicy)

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> Config:
        window = e.get(ENV_TELEMETRY_WINDOW) or "5m"
        if not window[:-1].isdigit() or window[-1] not in "smh" or int(window[:-1]) == 0:
            raise ConfigError(f"{ENV_TELEMETRY_WINDOW}={window!r}: use e.g. 30s, 5m, 1h")
        onoff = (e.get(ENV_REPLACE) or "on").lower()
        if onoff not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"{ENV_REPLACE}={onoff!r}: use on or off")
        insecure = (e.get(ENV_PROMETHEUS_INSECURE) or "false").lower()
        if insecure not in ("true", "false", "1", "0"):
            raise ConfigError(f"{ENV_PROMETHEUS_INSECURE}={insecure!r}: use true or false")
        try:
            prometheus = PromAccess(
                e.get(ENV_PROMETHEUS) or None,
                e.get(ENV_PROMETHEUS_TOKEN) or None,
                e.get(ENV_PROMETHEUS_CA) or None,
                insecure in ("true", "1"),
            )
        except PromAccessError as err:
            raise ConfigError(err.named(PROM_NAMES)) from None
        return cls(
            prometheus=prometheus,
            status_interval_s=_float(e, ENV_STATUS_INTERVAL, 30.0, minimum=1.0),
            telemetry_window=window,
            policy=ReplacementPolicy(
                enabled=onoff in ("on", "true", "1"),
                window_s=_float(e, ENV_REPLACE_WINDOW, 60.0),
                min_ticks=_int(e, ENV_REPLACE_TICKS, 3, minimum=1),
                cooldown_s=_float(e, ENV_REPLACE_COOLDOWN, 120.0),
                escalate_after=_int(e, ENV_REPLACE_ESCALATE, 2),
            ),
        )

    @classmethod
    def load(
        cls,
        env: Mapping[str, str],
        prometheus: str | None = None,
        status_interval: float | None = None,
    ) -> Config:
        """The flags win over the environment. They are merged in as the variables they stand
        for, so a bad value is reported by the same name whichever way it came."""
        merged = dict(env)
        if prometheus:
            merged[ENV_PROMETHEUS] = prometheus
        if status_interval is not None:
            merged[ENV_STATUS_INTERVAL] = f"{status_interval:g}"
        return cls.from_env(merged)
