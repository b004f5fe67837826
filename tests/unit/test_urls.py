"""`perllm.urls`: the one check of a user's http(s) URL (a host a resolver could look up,
a port in range) and the one way to show a URL without its credentials."""

from __future__ import annotations

import pytest

from perllm.urls import host_error, http_url_error, redact


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "https://perllm-router-chat.ns.svc.cluster.local:8080/v1",
        "http://127.0.0.1:1",
        "http://[::1]:8000",
        "http://[fe80::1%25eth0]:80",
        "http://cluster.local./x",  # fully qualified
        "http://_svc.example.com",
        "http://bücher.example/",  # looked up as its punycode
        "http://" + "a" * 63 + ".x",
    ],
)
def test_urls_a_resolver_could_reach_pass(url: str) -> None:
    assert http_url_error(url) is None


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://bad..host:9401", "empty label"),
        ("http://.host", "empty label"),
        ("http://a b:1/", "not a DNS label"),
        ("http://-a.example", "not a DNS label"),
        ("http://" + "a" * 64 + ".x", "longer than 63"),
        ("http://" + ".".join(["a" * 60] * 5), "longer than 253"),
        ("http://h:99999", "out of range"),
        ("ftp://h", "not an http(s) URL"),
        ("h:80", "not an http(s) URL"),
        ("https://", "no host"),
        ("http://[::1", "Invalid IPv6 URL"),
    ],
)
def test_urls_no_resolver_answers_are_named(url: str, said: str) -> None:
    why = http_url_error(url)
    assert why is not None and said in why, why


def test_host_error_takes_addresses_and_names() -> None:
    assert host_error("10.0.0.1") is None and host_error("::1") is None
    assert host_error("") == "no host"


def test_redact_keeps_credentials_out() -> None:
    assert redact("https://user:s3cret@prom:9090/x") == "https://***@prom:9090/x"
    assert redact("http://prom:9090") == "http://prom:9090"
    assert redact("http://[::1") == "http://[::1"  # unparsable, and nothing to hide
    assert redact("http://u:s3cret@[::1/x") == "http://***@[::1/x"
