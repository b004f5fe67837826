"""Numbers in pod and node annotations: one format (`perllm.labels.DECIMAL`), one parser
(`perllm.labels.ann_number`), read by the extender and the router's discovery; what the
operator and the local control plane write is in it."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from perllm_extender import create_app
from perllm_extender import nodes as xnodes
from perllm_operator import podspec
from test_extender_fakes import NODES, Obj

from perllm.contract import Deadline, Link, Requirements, ServiceSpec
from perllm.devcluster import nodes as devnodes
from perllm.labels import ANN_LINK_BANDWIDTH, ann_number, decimal, number_text
from perllm.profiles import default_catalogue
from perllm.router.discovery import backends_from
from perllm.scenario import load_scenario

# What float() reads as a number but is no plain decimal: each was taken as 10.
LOOSE = ["1_0", " 10", "10 ", "10\n", "\t10", "١٠", "\u00a010", "１０"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30.0), ("2.5", 2.5), ("1e-05", 1e-05), ("1e+06", 1e6), ("1E3", 1e3),
     ("-1", -1.0), ("+3", 3.0), (".5", 0.5), ("5.", 5.0), ("0", 0.0), ("007", 7.0)],
)  # fmt: skip
def test_a_plain_decimal_is_its_number(text: str, value: float) -> None:
    assert decimal(text) == value


@pytest.mark.parametrize("text", LOOSE)
def test_what_float_reads_beyond_a_plain_decimal_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"annotation perllm.io/x=.* is not a plain decimal"):
        ann_number({"perllm.io/x": text}, "perllm.io/x")


@pytest.mark.parametrize(
    ("text", "why"),
    [("nan", "not a finite number"), ("-inf", "not a finite number"), ("1e999", "not a "
     "finite number"), ("0x10", "not a number"), ("", "not a number"), ("1,5", "not a number")],
)  # fmt: skip
def test_no_number_is_named_with_its_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError) as e:
        ann_number({"perllm.io/x": text}, "perllm.io/x")
    assert str(e.value) == f"annotation perllm.io/x={text!r} is {why}"
    assert ann_number({}, "perllm.io/x") is None


def _pod(deadline: str) -> Obj:
    return {
        "metadata": {
            "name": "p",
            "namespace": "llm",
            "uid": "u1",
            "labels": {"perllm.io/service": "x"},
            "annotations": {"perllm.io/deadline-s": deadline},
        },
        "spec": {"schedulerName": "perllm-scheduler"},
    }


@pytest.mark.parametrize("text", LOOSE)
def test_a_pod_annotation_not_a_plain_decimal_is_a_400_naming_it(text: str) -> None:
    """The extender read a pod's `perllm.io/deadline-s: "1_0"` (or " 10 ", "١٠") as 10 s."""
    app = create_app()
    for n in NODES:
        app.state.scheduler.nodes.upsert(n)
    c = TestClient(app)
    r = c.post("/scheduler/filter", json={"Pod": _pod(text), "NodeNames": ["cloud"]})
    assert r.status_code == 400, r.text
    assert "perllm.io/deadline-s" in r.json()["Error"] and "plain decimal" in r.json()["Error"]
    r = c.post("/scheduler/filter", json={"Pod": _pod("10"), "NodeNames": ["cloud"]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("text", LOOSE)
@pytest.mark.parametrize("key", ["link-bandwidth-mbps", "link-rtt-ms", "link-noise"])
def test_a_node_annotation_not_a_plain_decimal_leaves_the_node_unmodelled(
    key: str, text: str
) -> None:
    """A node's `perllm.io/link-bandwidth-mbps: "1_00"` was a 100 Mbit/s link; it is now
    a node the extender (and the router's discovery) cannot model, the annotation named."""
    odd = json.loads(json.dumps(NODES[0]))
    value = "0.1" if key == "link-noise" else "10"
    odd["metadata"]["annotations"][f"perllm.io/{key}"] = text.replace("10", value)
    reason = xnodes.to_server(odd, default_catalogue())
    assert isinstance(reason, str), reason
    assert f"annotation perllm.io/{key}=" in reason and "plain decimal" in reason
    good = json.loads(json.dumps(NODES[0]))
    good["metadata"]["annotations"][f"perllm.io/{key}"] = value
    assert not isinstance(xnodes.to_server(good, default_catalogue()), str)


def test_discovery_leaves_out_a_pod_on_a_node_with_a_loose_number() -> None:
    node = json.loads(json.dumps(NODES[0]))
    node["metadata"]["annotations"][ANN_LINK_BANDWIDTH] = "1_000"
    pod = {
        "metadata": {"name": "chat-1", "namespace": "llm"},
        "spec": {"nodeName": node["metadata"]["name"]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.9",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    skipped: dict[str, str] = {}
    got = backends_from([pod], {node["metadata"]["name"]: node}, default_catalogue(),
                        skipped=skipped)  # fmt: skip
    assert got == [] and ANN_LINK_BANDWIDTH in skipped["chat-1"], skipped


@pytest.mark.parametrize(
    ("seconds", "per_token", "percentile", "quality"),
    [(30, 0, 95, 0), (0.001, 1e-05, 99.9, 0.625), (86_400, 60, 100, 1), (1.2345, 0.0125, 50, 0.5),
     (1.2345678, 0.0123456789, 99.95, 0.123456789), (1 / 3, 1e-07 / 3, 200 / 3, 2 / 3)],
)  # fmt: skip
def test_what_the_operator_writes_is_read_back_exactly(
    seconds: float, per_token: float, percentile: float, quality: float
) -> None:
    spec = ServiceSpec(
        name="x",
        model="llama2-7b",
        requirements=Requirements(
            deadline=Deadline(seconds=seconds, per_output_token_s=per_token,
                              percentile=percentile),
            min_quality=quality,
        ),
    )  # fmt: skip
    ann = podspec.pod_annotations(spec)
    keys = (podspec.ANN_DEADLINE, podspec.ANN_DEADLINE_PER_TOKEN, podspec.ANN_PERCENTILE,
            podspec.ANN_MIN_QUALITY)  # fmt: skip
    read = [ann_number(ann, k) for k in keys]
    assert read == [seconds, per_token, percentile, quality], ann


def test_what_the_local_control_plane_writes_is_read_back_exactly() -> None:
    """`f"{x:g}"` kept 6 significant digits: a link of 123.4567891 Mbit/s was modelled as
    123.457 (and a pod's deadline of 1.2345678 s, above, decided as 1.23457 s)."""
    sc = load_scenario("demo")
    odd = Link(bandwidth_mbps=123.4567891, noise=0.123456789, rtt_ms=7.000001,
               energy_uj_per_bit=1 / 3)  # fmt: skip
    servers = [s.model_copy(update={"link": odd}) for s in sc.servers]
    for scenario in (sc, sc.model_copy(update={"servers": servers})):
        nodes = devnodes.node_manifests(scenario)
        assert nodes
        for n, (_, s) in zip(nodes, scenario.expanded_servers(), strict=True):
            server = xnodes.to_server(n, scenario.catalogue)
            assert not isinstance(server, str), server
            assert server.link == s.link, n["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("x", "text"),
    [(30, "30"), (30.0, "30"), (2.5, "2.5"), (1e-05, "1e-05"), (86_400, "86400"),
     (1e7, "10000000"), (0.1, "0.1"), (1.2345678, "1.2345678"), (1 / 3, "0.3333333333333333")],
)  # fmt: skip
def test_numbers_are_written_as_before_where_that_was_exact(x: float, text: str) -> None:
    """(A pod template's annotations changed only where they were inexact: no rollout of
    every service on an operator upgrade.)"""
    assert number_text(x) == text and decimal(text) == x
