"""The Helm chart's RBAC: the same rules as the components' own rbac.yaml, no verb a
component never uses, namespaced roles where the operator watches named namespaces, and
LLMServices for users through the default roles.

Needs the pinned Helm (tools/build-binaries.sh helm); without it these tests skip, saying
so (chart_render.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from chart_render import ROOT, Doc, _grants, _helm, find, render

from perllm.demo.rbac import load_rbac


def test_operator_rbac_equals_operator_rbac_yaml() -> None:
    want = next(
        d
        for d in yaml.safe_load_all((ROOT / "operator" / "rbac.yaml").read_text())
        if d and d["kind"] == "ClusterRole"
    )
    docs = render()
    assert find(docs, "ClusterRole", "perllm-operator")["rules"] == want["rules"]
    binding = find(docs, "ClusterRoleBinding", "perllm-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "perllm-operator", "namespace": "perllm-system"}
    ]


def test_operator_watching_named_namespaces_gets_roles_there_only() -> None:
    cluster_wide = find(render(), "ClusterRole", "perllm-operator")["rules"]
    docs = render("--set", "operator.namespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "perllm-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "perllm-operator"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["kind"] == "Role" for b in bindings)
    narrow = find(docs, "ClusterRole", "perllm-operator")["rules"]
    # Together the Roles and the narrowed ClusterRole grant what the cluster-wide one does,
    # and namespaces list/watch (NAMESPACES, below); the ClusterRole keeps only
    # cluster-scoped resources.
    assert _grants(roles[0]["rules"]) | _grants(narrow) == _grants(cluster_wide) | NAMESPACES
    assert {res for _, res, _, _ in _grants(narrow)} == {"customresourcedefinitions", "namespaces"}


# kopf (observation.namespace_observer) lists and watches every namespace when run with
# --namespace, to learn which of the named ones exist, and never cluster-wide.
NAMESPACES = {("", "namespaces", "*", "list"), ("", "namespaces", "*", "watch")}


def test_operator_gets_namespaces_only_when_kopf_watches_them() -> None:
    """The cluster-wide role granted namespaces list/watch ("namespace patterns"), which
    kopf never uses cluster-wide: the rule is the named-namespace mode's alone."""
    cluster_wide = _grants(find(render(), "ClusterRole", "perllm-operator")["rules"])
    assert not {g for g in cluster_wide if g[1] == "namespaces"}
    docs = render("--set", "operator.namespaces={team-a}")
    named = _grants(find(docs, "ClusterRole", "perllm-operator")["rules"])
    assert {g for g in named if g[1] == "namespaces"} == NAMESPACES
    args = find(docs, "Deployment", "perllm-operator")["spec"]["template"]["spec"]
    assert "--namespace=team-a" in args["containers"][0]["args"]


def test_operator_rules_grant_no_verb_it_never_uses() -> None:
    grants = _grants(find(render(), "ClusterRole", "perllm-operator")["rules"])
    # delete: only the children a spec no longer renders (never pods: those are evicted)
    deletes = {g[1] for g in grants if g[3] in ("delete", "deletecollection")}
    assert deletes == {"inferenceservices", "deployments", "services", "serviceaccounts"}
    # the ServiceAccount of gated weights lists a Secret by name: no verb on secrets at all
    assert not {g for g in grants if g[1] == "secrets"}
    assert not {g for g in grants if g[3] == "deletecollection"}
    assert not {g for g in grants if g[3] == "update" and g[1] != "llmservices/finalizers"}
    # Events: kopf posts core v1 Events, POST only (kopf/_cogs/clients/events.py): no
    # events.k8s.io, no patch.
    assert {g for g in grants if g[1] == "events"} == {("", "events", "*", "create")}


def test_extender_rbac_equals_extender_rbac_yaml() -> None:
    path = ROOT / "extender" / "rbac.yaml"
    assert path.exists(), "extender/rbac.yaml (the extender's least-privilege rules) is missing"
    theirs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = render()
    for kind in ("ClusterRole", "Role"):
        want = [r for d in theirs if d["kind"] == kind for r in d["rules"]]
        got = [
            r
            for d in docs
            if d["kind"] == kind and d["metadata"]["name"] == "perllm-extender"
            for r in d["rules"]
        ]
        assert _grants(got) == _grants(want), f"{kind} rules differ from extender/rbac.yaml"


def test_extender_rbac_covers_the_contracts() -> None:
    docs = render(namespace="edge-a")
    cr = find(docs, "ClusterRole", "perllm-extender")["rules"]

    def grants(
        rules: list[Doc], group: str, resource: str, verb: str, name: str | None = None
    ) -> bool:
        return any(
            group in r["apiGroups"]
            and resource in r["resources"]
            and verb in r["verbs"]
            and (not r.get("resourceNames") or name in r["resourceNames"])
            for r in rules
        )

    for res in ("nodes", "pods"):
        assert grants(cr, "", res, "list") and grants(cr, "", res, "watch")
    assert grants(cr, "", "nodes", "get")  # a node missing from the scheduler's cache
    assert grants(cr, "perllm.io", "llmservices", "list")
    assert grants(cr, "perllm.io", "llmservices", "watch")
    assert not grants(cr, "perllm.io", "llmservices", "get")  # the informer never gets one
    assert grants(cr, "perllm.io", "llmservices/status", "patch")
    assert not grants(cr, "perllm.io", "llmservices", "patch")  # status only
    assert grants(cr, "", "events", "create")
    role = find(docs, "Role", "perllm-extender")
    assert role["metadata"]["namespace"] == "edge-a"
    for verb in ("get", "patch"):
        assert grants(role["rules"], "", "configmaps", verb, "perllm-extender-state")
        assert not grants(role["rules"], "", "configmaps", verb, "another")
    assert grants(role["rules"], "", "configmaps", "create")
    env = find(docs, "Deployment", "perllm-extender")["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "PERLLM_STATE_NAMESPACE", "value": "edge-a"} in env


def test_users_get_llmservices_through_the_default_roles() -> None:
    docs = render()
    view = find(docs, "ClusterRole", "perllm-llmservices-view")
    edit = find(docs, "ClusterRole", "perllm-llmservices-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    vg, eg = _grants(view["rules"]), _grants(edit["rules"])
    assert ("perllm.io", "llmservices", "*", "list") in vg
    assert not any(v in ("create", "patch", "update", "delete") for *_, v in vg)
    for verb in ("create", "update", "patch", "delete"):
        assert ("perllm.io", "llmservices", "*", verb) in eg
    assert not any(res == "llmservices/status" for _, res, _, _ in eg)  # status: controllers'
    off = render("--set", "rbac.aggregateToDefaultRoles=false")
    assert not any("llmservices-" in d["metadata"]["name"] for d in off)


def test_the_demo_renders_the_mode_it_runs_the_operator_in() -> None:
    """The demo runs `perllm operator --namespace perllm-demo` (perllm/demo/stack.py): its
    RBAC is the chart's for that namespace, namespaces list/watch included, not the
    cluster-wide role (which no longer has it)."""
    rbac = load_rbac(Path(_helm()), "perllm-system", ["perllm-demo"])
    assert rbac.source.startswith("chart") and rbac.warning is None
    role = find(rbac.docs, "Role", "perllm-operator")
    assert role["metadata"]["namespace"] == "perllm-demo"
    cluster = _grants(find(rbac.docs, "ClusterRole", "perllm-operator")["rules"])
    assert {g for g in cluster if g[1] == "namespaces"} == NAMESPACES
    assert not {g for g in cluster if g[1] in ("pods", "deployments", "llmservices")}
    assert rbac.account("operator") == ("perllm-system", "perllm-operator")
