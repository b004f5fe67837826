"""Operator settings. `perllm operator` flags are passed to the handlers module through
environment variables, because kopf imports that module itself (and the timer's interval
is fixed when it is imported)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from perllm_operator.replace import Policy

ENV_PROMETHEUS = "PERLLM_PROMETHEUS_URL"
ENV_STATUS_INTERVAL = "PERLLM_STATUS_INTERVAL"
ENV_TELEMETRY_WINDOW = "PERLLM_TELEMETRY_WINDOW"
ENV_REPLACE = "PERLLM_REPLACEMENT"  # "on" | "off"
ENV_REPLACE_WINDOW = "PERLLM_REPLACEMENT_WINDOW"
ENV_REPLACE_TICKS = "PERLLM_REPLACEMENT_TICKS"
ENV_REPLACE_COOLDOWN = "PERLLM_REPLACEMENT_COOLDOWN"
ENV_REPLACE_ESCALATE = "PERLLM_REPLACEMENT_ESCALATE_AFTER"


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable."""


def _float(env: dict[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: not a number") from None
    if v < minimum:
        raise ConfigError(f"{key}={raw!r}: must be >= {minimum:g}")
    return v


@dataclass(frozen=True)
class Config:
    prometheus_url: str | None = None
    status_interval_s: float = 30.0
    telemetry_window: str = "5m"  # PromQL range of the rate() queries
    policy: Policy = field(default_factory=Policy)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        e = dict(os.environ) if env is None else env
        window = e.get(ENV_TELEMETRY_WINDOW) or "5m"
        if not window[:-1].isdigit() or window[-1] not in "smh":
            raise ConfigError(f"{ENV_TELEMETRY_WINDOW}={window!r}: use e.g. 30s, 5m, 1h")
        onoff = (e.get(ENV_REPLACE) or "on").lower()
        if onoff not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"{ENV_REPLACE}={onoff!r}: use on or off")
        return cls(
            prometheus_url=e.get(ENV_PROMETHEUS) or None,
            status_interval_s=_float(e, ENV_STATUS_INTERVAL, 30.0, minimum=1.0),
            telemetry_window=window,
            policy=Policy(
                enabled=onoff in ("on", "true", "1"),
                window_s=_float(e, ENV_REPLACE_WINDOW, 60.0),
                min_ticks=int(_float(e, ENV_REPLACE_TICKS, 3.0, minimum=1.0)),
                cooldown_s=_float(e, ENV_REPLACE_COOLDOWN, 120.0),
                escalate_after=int(_float(e, ENV_REPLACE_ESCALATE, 2.0)),
            ),
        )
