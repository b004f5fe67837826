"""`perllm router`'s config: every error names its field (and its file)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from router_harness import BACKENDS, config

from perllm.router.app import Router
from perllm.router.config import RouterConfigError, load_config, parse_config


def test_a_model_level_config_error_has_no_empty_location() -> None:
    """A check of the whole config (no pydantic location) read `r.yaml: : Value error,
    backends: names must be unique`: the field is in its message."""
    twice = [BACKENDS[0], {**BACKENDS[1], "name": BACKENDS[0]["name"]}]
    with pytest.raises(RouterConfigError) as e:
        parse_config({"scenario": "demo", "service_class": "chat", "backends": twice}, "r.yaml")
    assert str(e.value) == "r.yaml: backends: names must be unique"
    with pytest.raises(RouterConfigError) as e:  # a field's own check: no prefix either
        parse_config({"scenario": "demo", "service_class": "chat",
                      "backends": [{**BACKENDS[0], "url": "http://"}]}, "r.yaml")  # fmt: skip
    assert str(e.value).startswith("r.yaml: backends.0.url: 'http://'"), e.value
    assert "Value error" not in str(e.value)


def test_config_errors_are_clear(tmp_path: Any) -> None:
    with pytest.raises(RouterConfigError, match="backends"):
        parse_config({"scenario": "demo", "service_class": "chat", "backends": []})
    with pytest.raises(RouterConfigError, match="service_class"):
        Router(parse_config({"scenario": "demo", "service_class": "nope", "backends": BACKENDS}))
    bad = [{**BACKENDS[0], "hardware": "abacus"}]
    with pytest.raises(RouterConfigError, match="abacus"):
        Router(parse_config({"scenario": "demo", "service_class": "chat", "backends": bad}))
    p = tmp_path / "r.yaml"
    p.write_text(json.dumps({"scenario": "demo", "service_class": "chat", "backends": BACKENDS}))
    assert load_config(p).backends[1].name == "cloud"
    p.write_text("a: b: c\n")
    with pytest.raises(RouterConfigError, match=r"not valid YAML: line 1, column 5: mapping"):
        load_config(p)
    # a key given twice is refused (PyYAML kept the last: `shed: true` then `shed: false`
    # shed nothing), as in a scenario; a binary file is no traceback
    p.write_text("scenario: demo\nservice_class: chat\nshed: true\nshed: false\n")
    with pytest.raises(RouterConfigError, match=r"line 4, column 1: duplicate key 'shed'"):
        load_config(p)
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(RouterConfigError, match="not a text file"):
        load_config(p)
    # A URL the upstream pool cannot connect to is the config's error, naming the field
    # (it was a ValueError traceback from the pool when the router started).
    for url in ("http://", "http://h:99999", "http://h:abc", "http://[::1", "http://bad..host:80"):
        bad = [{**BACKENDS[0], "url": url}]
        with pytest.raises(RouterConfigError, match=r"backends\.0\.url: .*" + re.escape(url)):
            parse_config({"scenario": "demo", "service_class": "chat", "backends": bad})
    bad = [{**BACKENDS[0], "url": "https://me:s3cret@llm.example.com"}]
    with pytest.raises(RouterConfigError, match=r"backends\.0\.url: .*token_file") as e:
        parse_config({"scenario": "demo", "service_class": "chat", "backends": bad})
    assert "s3cret" not in str(e.value)
    bad = [{**BACKENDS[0], "url": "https://me:s3cret@bad..host"}]  # refused for its host
    with pytest.raises(RouterConfigError, match=r"backends\.0\.url: .*empty label") as e:
        parse_config({"scenario": "demo", "service_class": "chat", "backends": bad})
    assert "s3cret" not in str(e.value)
    # CSUCBConfig's fields are refused by name, not turned into NaN decisions (an
    # output_prior_sigma of 0 made every class's output-length quantiles 1 token).
    for field, v in (("output_prior_sigma", 0.0), ("prior_n", math.nan), ("memory", math.nan)):
        with pytest.raises(RouterConfigError, match=rf"csucb[.:] ?{field}: "):
            Router(config(csucb={field: v}))
    # inf where CS-UCB gives it a meaning (memory: no forgetting) stays accepted
    assert config(csucb={"memory": math.inf, "backlog_waiting": math.inf}).csucb_config()
    # An infinite energy weight (was accepted: every option's normalised energy NaN).
    with pytest.raises(RouterConfigError, match=r"weights\.tran: .*finite"):
        config(weights={"tran": math.inf})
    # Seconds that pass `> 0` but would hang a request or stop a loop (were accepted).
    base = {"scenario": "demo", "service_class": "chat", "backends": BACKENDS}
    for section, field in (
        ("limits", "read_timeout_s"),
        ("limits", "queue_timeout_s"),
        ("limits", "eject_max_s"),
        ("discovery", "interval_s"),
        ("discovery", "status_interval_s"),
    ):
        extra = {"service": "ns/svc"} if section == "discovery" else {}
        for v in (math.inf, math.nan, 1e300):
            with pytest.raises(RouterConfigError, match=rf"{section}\.{field}: "):
                parse_config({**base, section: {**extra, field: v}})


LOOSE = [  # (a key path of the config, the kind of value it takes)
    ("backends.0.bandwidth_mbps", "number"),
    ("limits.max_body_bytes", "integer"),
    ("limits.max_concurrency", "integer"),
    ("limits.max_queue", "integer"),
    ("limits.queue_timeout_s", "number"),
    ("limits.connect_timeout_s", "number"),
    ("limits.read_timeout_s", "number"),
    ("limits.body_timeout_s", "number"),
    ("limits.send_timeout_s", "number"),
    ("limits.total_timeout_s", "number"),
    ("limits.eject_s", "number"),
    ("limits.eject_max_s", "number"),
    ("limits.retries", "integer"),
    ("limits.probe", "boolean"),
    ("discovery.port", "integer"),
    ("discovery.interval_s", "number"),
    ("discovery.timeout_s", "number"),
    ("discovery.status_interval_s", "number"),
    ("discovery.prometheus_insecure_skip_verify", "boolean"),
    ("shed", "boolean"),
    ("csucb.delta", "number"),
]


def _strict_base() -> dict[str, Any]:
    return {
        "scenario": "demo",
        "service_class": "chat",
        "backends": [{**BACKENDS[0], "bandwidth_mbps": 50}, BACKENDS[1]],
        "discovery": {"service": "team-a/chat", "port": 8000, "interval_s": 5,
                      "status_interval_s": 0, "prometheus_insecure_skip_verify": False},
        "shed": True,
        "csucb": {"delta": 1},
        "limits": {"max_body_bytes": 2**20, "max_concurrency": 8, "max_queue": 0,
                   "queue_timeout_s": 1, "read_timeout_s": 30, "total_timeout_s": 60.5,
                   "retries": 1, "probe": False},
    }  # fmt: skip


@pytest.mark.parametrize("value", [True, "2", "true"])
@pytest.mark.parametrize(("path", "kind"), LOOSE)
def test_a_string_or_a_boolean_is_no_number_and_a_number_no_boolean(
    path: str, kind: str, value: object
) -> None:
    """The config's own numbers and flags were lax (the scenario's are strict): a YAML
    `true` or "2" became 1 or 2 (`retries: true` retried once, `read_timeout_s: "30"` 30 s)
    and "true" or 1 a boolean (`probe: "false"` turned probing off). Each is refused at
    startup naming its key path."""
    d = _strict_base()
    parse_config(d, "r.yaml")  # (valid as it is: ints where floats are meant)
    if kind == "boolean":
        value = 1 if value is True else value  # (a boolean is a boolean)
    node: Any = d
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    with pytest.raises(RouterConfigError) as e:
        parse_config(d, "r.yaml")
    assert str(e.value) == f"r.yaml: {path}: Input should be a valid {kind}", e.value


def test_a_whole_number_key_takes_integers_only() -> None:
    """`max_concurrency: 8.0` was read as 8 (a float field still takes an int: `30`)."""
    d = _strict_base()
    d["limits"]["max_concurrency"] = 8.0
    with pytest.raises(RouterConfigError, match=r"limits\.max_concurrency: .*valid integer"):
        parse_config(d, "r.yaml")
    cfg = parse_config(_strict_base(), "r.yaml")
    assert cfg.limits.read_timeout_s == 30.0 and isinstance(cfg.limits.read_timeout_s, float)
    assert cfg.backends[0].measured_mbps == 50.0 and cfg.csucb == {"delta": 1.0}


@pytest.mark.parametrize("mbps", [1e-300, 0.0009, 1.1e7])
def test_a_backends_bandwidth_is_within_a_links_bounds(mbps: float) -> None:
    """`bandwidth_mbps` was only > 0: 1e-300 loaded, and every upload to the backend took
    for ever in CS-UCB's estimate. A link's own bounds (0.001 to 1e7 Mbit/s) hold."""
    d = _strict_base()
    d["backends"][0]["bandwidth_mbps"] = mbps
    with pytest.raises(RouterConfigError, match=r"backends\.0\.bandwidth_mbps: Input should be"):
        parse_config(d, "r.yaml")
    d["backends"][0]["bandwidth_mbps"] = 0.001
    assert parse_config(d, "r.yaml").backends[0].bandwidth_mbps == 0.001
