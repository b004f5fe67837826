"""The LLMService CRD on a real API server (issue #4 acceptance, CRD part): it installs,
each example applies, `kubectl get` shows the printer columns, `kubectl explain` documents
the fields, and each invalid spec is rejected at admission with its field named."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.crd import CRD_PATH, PLURAL
from perllm.devcluster.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(kube: Kube) -> Kube:
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.perllm.io", "--timeout=60s")
    # Discovery can lag the Established condition by a moment.
    for _ in range(30):
        if kube.kubectl("get", PLURAL, "-A", check=False).returncode == 0:
            break
        time.sleep(1)
    return kube


def test_examples_apply_and_show_printer_columns(crd: Kube, namespace: str) -> None:
    for path in EXAMPLES:
        crd.kubectl("apply", "-n", namespace, "-f", str(path))
    out = crd.kubectl("get", PLURAL, "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "DEADLINE", "TIER", "ATTAINMENT", "J/REQ", "READY", "AGE"]
    for path in EXAMPLES:
        assert yaml.safe_load(path.read_text())["metadata"]["name"] in out
    # Defaults come from the schema: replicas, backend, percentile, allowed tiers.
    chat = crd.get(PLURAL, "chat-assistant", "-n", namespace)
    assert chat["spec"]["backend"] == "kserve"
    assert chat["spec"]["allowedTiers"] == ["edge", "cloud"]
    assert chat["spec"]["requirements"]["minQuality"] == 0


def test_explain_documents_the_fields(crd: Kube) -> None:
    out = crd.kubectl("explain", "llmservice.spec.requirements.deadline").stdout
    assert "perOutputTokenSeconds" in out and "Fixed part of the deadline" in out
    assert "quality floor" in crd.kubectl("explain", "llmservice.spec.requirements").stdout.lower()


def _chat() -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "manifests/chat-assistant.yaml").read_text())
    obj["metadata"]["name"] = "bad"
    return obj


def _edit(fn_src: str) -> dict[str, Any]:
    obj = copy.deepcopy(_chat())
    spec = obj["spec"]
    exec(fn_src, {"copy": copy}, {"obj": obj, "spec": spec})
    return obj


def _set(path: str, value: str) -> tuple[str, str]:
    """The edit setting `spec.<path>` to the Python expression `value`, and the field the
    error must name: that same path."""
    keys = "".join(f"[{k!r}]" for k in path.split("."))
    return f"spec{keys} = {value}", f"spec.{path}"


def _dry_run(crd: Kube, namespace: str, edit: str) -> subprocess.CompletedProcess[str]:
    """Server-side dry run of applying the edited copy of manifests/chat-assistant.yaml."""
    return crd.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        check=False,
        input=json.dumps(_edit(edit)),
    )


V0 = "spec['model']['variants'][0]"
V1 = "spec['model']['variants'][1]"
R0 = V0 + "['resources']"
R1 = V1 + "['resources']"

# (case, edit of a copy of manifests/chat-assistant.yaml, the field the error must name)
BAD = [
    # requirements
    ("negative deadline", *_set("requirements.deadline.seconds", "-1")),
    ("zero deadline", *_set("requirements.deadline.seconds", "0")),
    ("deadline above a day", *_set("requirements.deadline.seconds", "86401")),
    ("no deadline", "del spec['requirements']['deadline']", "spec.requirements.deadline"),
    ("negative per-token allowance", *_set("requirements.deadline.perOutputTokenSeconds", "-1")),
    ("per-token allowance above 60 s", *_set("requirements.deadline.perOutputTokenSeconds", "61")),
    ("zero percentile", *_set("requirements.deadline.percentile", "0")),
    ("percentile above 100", *_set("requirements.deadline.percentile", "101")),
    ("quality floor above 1", *_set("requirements.minQuality", "1.5")),
    ("quality floor below 0", *_set("requirements.minQuality", "-0.1")),
    (
        "quality floor above every variant's quality",
        "spec['requirements']['minQuality'] = 0.7; "
        "[v.update(quality=0.6) for v in spec['model']['variants']]",
        "spec.requirements.minQuality",
    ),
    # traffic
    ("rate of a million rps", *_set("traffic.rateRps", "1000000")),
    ("negative rate", *_set("traffic.rateRps", "-1")),
    ("rate not a number", *_set("traffic.rateRps", "'fast'")),
    ("zero prompt tokens", *_set("traffic.promptTokens", "0")),
    ("prompt above 2^20 tokens", *_set("traffic.promptTokens", "2**20 + 1")),
    ("zero output tokens", *_set("traffic.outputTokens", "0")),
    ("output above 2^17 tokens", *_set("traffic.outputTokens", "10**6")),
    ("negative payload", *_set("traffic.payloadBytes", "-1")),
    ("payload above 1 GiB", *_set("traffic.payloadBytes", "2**31")),
    # replicas, backend, tiers
    ("negative replicas", *_set("replicas", "-1")),
    ("too many replicas", *_set("replicas", "1001")),
    ("fractional replicas", *_set("replicas", "1.5")),
    ("unknown backend", *_set("backend", "'ray'")),
    ("unknown allowed tier", "spec['allowedTiers'] = ['edge', 'moon']", "spec.allowedTiers[1]"),
    ("no allowed tier", *_set("allowedTiers", "[]")),
    ("allowed tier twice", "spec['allowedTiers'] = ['edge', 'edge']", "spec.allowedTiers[1]"),
    # replicas per tier
    ("no tier in tierReplicas", *_set("tierReplicas", "{}")),
    ("no replica in tierReplicas", *_set("tierReplicas", "{'edge': 0, 'cloud': 0}")),
    ("too many edge replicas", "spec['tierReplicas'] = {'edge': 1001}", "spec.tierReplicas.edge"),
    ("negative cloud replicas", "spec['tierReplicas'] = {'cloud': -1}", "spec.tierReplicas.cloud"),
    (
        "tierReplicas outside allowedTiers",
        "spec['allowedTiers'] = ['cloud']; spec['tierReplicas'] = {'edge': 1, 'cloud': 1}",
        "spec.tierReplicas",
    ),
    # model
    ("no model", "del spec['model']", "spec.model"),
    ("empty model name", *_set("model.name", "''")),
    ("model name of 254 characters", *_set("model.name", "'m' * 254")),
    ("empty format", *_set("model.format", "''")),
    ("format of 64 characters", *_set("model.format", "'f' * 64")),
    ("300 KB runtime", *_set("model.runtime", "'r' * 300_000")),
    ("runtime not an object name", *_set("model.runtime", "'My Runtime'")),
    ("bad storage URI", *_set("model.storageUri", "'ftp://x'")),
    ("300 KB storage URI", *_set("model.storageUri", "'hf://' + 'u' * 300_000")),
    ("storage URI above 2048 characters", *_set("model.storageUri", "'hf://' + 'u' * 2044")),
    # free-form strings: no whitespace or control characters (a model name is a CLI argument)
    ("storage URI with a newline", *_set("model.storageUri", "'hf://org/repo\\nx'")),
    (
        "variant storage URI with a space",
        V0 + "['storageUri'] = 'https://h/a b.gguf'",
        "spec.model.variants[0].storageUri",
    ),
    ("format with a space", *_set("model.format", "'hugging face'")),
    (
        "variant format with a newline",
        V1 + "['format'] = 'gguf\\n'",
        "spec.model.variants[1].format",
    ),
    ("model name with a space", *_set("model.name", "'llama 3'")),
    ("model name with a newline", *_set("model.name", "'llama3\\nx'")),
    ("model name read as an option", *_set("model.name", "'--model=x'")),
    # variants
    ("no variants", *_set("model.variants", "[]")),
    (
        "three variants",
        "spec['model']['variants'].append(copy.deepcopy(spec['model']['variants'][0]))",
        "spec.model.variants",
    ),
    ("allowed tier without a variant", *_set("model.variants", "spec['model']['variants'][1:]")),
    ("two variants for one tier", V0 + "['tier'] = 'cloud'", "spec.model.variants"),
    ("unknown tier", V0 + "['tier'] = 'fog'", "spec.model.variants[0].tier"),
    ("unknown precision", V0 + "['precision'] = 'fp4'", "spec.model.variants[0].precision"),
    ("no precision", "del " + V0 + "['precision']", "spec.model.variants[0].precision"),
    ("variant quality above 1", V1 + "['quality'] = 2", "spec.model.variants[1].quality"),
    ("variant quality below 0", V1 + "['quality'] = -0.5", "spec.model.variants[1].quality"),
    ("variant without resources", V0 + "['resources'] = {}", "spec.model.variants[0].resources"),
    (
        "variant with empty resource maps",
        V0 + "['resources'] = {'requests': {}, 'limits': {}}",
        "spec.model.variants[0].resources",
    ),
    # resources: quantities
    (
        "cpu: banana",
        R0 + "['requests']['cpu'] = 'banana'",
        "spec.model.variants[0].resources.requests[cpu]",
    ),
    (
        "cpu: -4 (integer)",
        R0 + "['requests']['cpu'] = -4",
        "spec.model.variants[0].resources.requests[cpu]",
    ),
    (
        "memory: -16Gi",
        R0 + "['limits']['memory'] = '-16Gi'",
        "spec.model.variants[0].resources.limits[memory]",
    ),
    (
        "cpu: 500 mcores (a space)",
        R1 + "['limits']['cpu'] = '500 m'",
        "spec.model.variants[1].resources.limits[cpu]",
    ),
    (
        "cpu: 0.5 (a float, not a string)",
        R0 + "['requests']['cpu'] = 0.5",
        "spec.model.variants[0].resources.requests.cpu",
    ),
    (
        "quantity of 65 characters",
        R0 + "['requests']['cpu'] = '1' * 65",
        "spec.model.variants[0].resources.requests.cpu",
    ),
    # resources: requests <= limits
    (
        "cpu request above its limit",
        R0 + "['requests']['cpu'] = '24'",
        "spec.model.variants[0].resources.requests",
    ),
    (
        "memory request above its limit (other units)",
        R1 + "['requests']['memory'] = '70000Mi'",
        "spec.model.variants[1].resources.requests",
    ),
    (
        "GPU request below its limit",
        R1 + "['limits']['nvidia.com/gpu'] = '2'",
        "spec.model.variants[1].resources.requests",
    ),
    (
        "fractional GPU request above its limit",
        R1 + "['requests']['nvidia.com/gpu'] = '1500m'",
        "spec.model.variants[1].resources.requests",
    ),
    (
        "half a GPU (request = limit)",
        R1 + "['requests']['nvidia.com/gpu'] = " + R1 + "['limits']['nvidia.com/gpu'] = '500m'",
        "spec.model.variants[1].resources.requests",
    ),
    # resources: huge pages (never overcommitted, beside cpu or memory, in whole pages)
    (
        "huge pages request below their limit",
        R0
        + "['requests']['hugepages-2Mi'] = '512Mi'; "
        + R0
        + "['limits']['hugepages-2Mi'] = '1Gi'",
        "spec.model.variants[0].resources.requests",
    ),
    (
        "huge pages requested without a limit",
        R0 + "['requests']['hugepages-2Mi'] = '1Gi'",
        "spec.model.variants[0].resources.requests",
    ),
    (
        "huge pages without cpu or memory",
        R0 + " = {'limits': {'hugepages-2Mi': '1Gi'}}",
        "spec.model.variants[0].resources",
    ),
    (
        "huge pages not a whole number of pages",
        R0 + "['limits']['hugepages-2Mi'] = '3Mi'",
        "spec.model.variants[0].resources.limits",
    ),
    # resources: names
    (
        "resource ../../etc",
        R0 + "['requests']['../../etc'] = '1'",
        "spec.model.variants[0].resources.requests",
    ),
    (
        "resource with a space",
        R1 + "['limits']['nvidia.com/g pu'] = '1'",
        "spec.model.variants[1].resources.limits",
    ),
    (
        "GPU requested without a limit",
        R1 + "['limits'].pop('nvidia.com/gpu')",
        "spec.model.variants[1].resources.requests",
    ),
    (
        "resource without a domain",
        R0 + "['limits']['gpu'] = '1'",
        "spec.model.variants[0].resources.limits",
    ),
    (
        "17 resources",
        R0 + "['requests'].update({f'example.com/r{i}': '1' for i in range(15)})",
        "spec.model.variants[0].resources.requests",
    ),
    # name: the children are <name> and <name>-predictor (a Service name: DNS-1035, <= 63)
    ("name of 54 characters", "obj['metadata']['name'] = 'n' * 54", "metadata.name"),
    ("name starting with a digit", "obj['metadata']['name'] = '7b-chat'", "metadata.name"),
    (
        "name of 48 characters with tierReplicas",
        "obj['metadata']['name'] = 'n' * 48; spec['tierReplicas'] = {'edge': 1}",
        "metadata.name",
    ),
    # backend kserve: its storage initializer reads a Hugging Face token from key HF_TOKEN only
    (
        "token key other than HF_TOKEN with backend kserve and hf:// weights",
        "spec['model']['tokenSecretRef']['key'] = 'token'",
        "spec.model.tokenSecretRef.key",
    ),
    # backend kserve: its storage initializer takes hf://<org>/<repo>[:<revision>] only
    (
        "hf:// file path with backend kserve",
        V1 + "['storageUri'] = 'hf://org/repo-GGUF/model.gguf'",
        "spec.model.variants",
    ),
    (
        "model-level hf:// without a repository with backend kserve",
        "[v.pop('storageUri') for v in spec['model']['variants']]; "
        "spec['model']['storageUri'] = 'hf://org'",
        "spec.model.storageUri",
    ),
    # backend deployment: the server fetches hf:// weights itself; llama.cpp (the edge
    # variant's) takes a revision only with its file
    (
        "hf:// revision without a file for llama.cpp with backend deployment",
        "spec['backend'] = 'deployment'; " + V0 + "['storageUri'] = 'hf://org/repo-GGUF:main'",
        "spec.model.variants",
    ),
    (
        "model-level hf:// revision without a file for llama.cpp with backend deployment",
        "spec['backend'] = 'deployment'; " + V0 + ".pop('storageUri'); "
        "spec['model']['storageUri'] = 'hf://org/repo-GGUF:main'",
        "spec.model.storageUri",
    ),
    # backend deployment: vLLM (the cloud variant's) serves a whole repository, no file
    (
        "hf:// file for vLLM with backend deployment",
        "spec['backend'] = 'deployment'; " + V1 + "['storageUri'] = 'hf://org/repo/model.gguf'",
        "spec.model.variants",
    ),
    (
        "hf:// file for runtime perllm-vllm with backend deployment",
        "spec['backend'] = 'deployment'; "
        + V0
        + "['storageUri'] = 'hf://org/r-GGUF:v2/m.gguf'; "
        + V0
        + "['runtime'] = 'perllm-vllm'",
        "spec.model.variants",
    ),
    (
        "model-level hf:// file for vLLM with backend deployment",
        "spec['backend'] = 'deployment'; " + V1 + ".pop('storageUri'); "
        "spec['model']['storageUri'] = 'hf://org/repo/model.gguf'",
        "spec.model.storageUri",
    ),
    (
        "hf:// without a repository with backend deployment",
        "spec['backend'] = 'deployment'; " + V1 + "['storageUri'] = 'hf://org'",
        "spec.model.variants",
    ),
    # backend kserve: KServe labels the pods app: isvc.<name>[-<tier>]-predictor (<= 63)
    (
        "name of 49 characters with backend kserve",
        "obj['metadata']['name'] = 'n' * 49",
        "metadata.name",
    ),
    (
        "name of 43 characters with backend kserve and tierReplicas",
        "obj['metadata']['name'] = 'n' * 43; spec['tierReplicas'] = {'edge': 1}",
        "metadata.name",
    ),
]


@pytest.mark.parametrize(("case", "edit", "field"), BAD, ids=[b[0] for b in BAD])
def test_invalid_spec_is_rejected_naming_the_field(
    crd: Kube, namespace: str, case: str, edit: str, field: str
) -> None:
    r = _dry_run(crd, namespace, edit)
    assert r.returncode != 0, f"{case}: accepted"
    # The apiserver writes `<field path>: <reason>`; a prefix of a longer path does not count.
    assert f"{field}: " in r.stderr, f"{case}: {r.stderr}"


def test_the_table_covers_enough_fields() -> None:
    assert len(BAD) >= 40
    assert len({field for _, _, field in BAD}) >= 30


# At the limits, every bound admits: the table above is rejected for the violation alone.
AT_THE_LIMITS = [
    "obj['metadata']['name'] = 'n' * 53; spec['backend'] = 'deployment'",
    "obj['metadata']['name'] = 'n' * 48",
    "obj['metadata']['name'] = 'n' * 42; spec['tierReplicas'] = {'edge': 1, 'cloud': 1}",
    "spec['traffic'] = {'rateRps': 1000, 'promptTokens': 2**20, 'outputTokens': 2**17, "
    "'payloadBytes': 2**30}",
    "spec['replicas'] = 1000; spec['backend'] = 'deployment'",
    "obj['metadata']['name'] = 'n' * 47; spec['tierReplicas'] = {'edge': 1000, 'cloud': 0}; "
    "spec['backend'] = 'deployment'",
    "spec['requirements']['deadline'] = {'seconds': 86400, 'perOutputTokenSeconds': 60, "
    "'percentile': 100}",
    "spec['model'].update(name='m' * 253, format='f' * 63, runtime='kserve-vllm.v1', "
    "storageUri='https://' + 'u' * 2040)",
    "spec['model'].update(name='org/model-GGUF:Q4_K_M', format='PyTorch_2.1', "
    "storageUri='https://h/o/mod%C3%A8le.gguf?download=true')",
    R0 + "['requests'] = {'cpu': 4, 'memory': '15.5Gi', 'ephemeral-storage': '0', "
    "'hugepages-2Mi': '1Gi', 'example.com/fpga': 1}; " + R0 + "['limits'] = {'cpu': '4000m', "
    "'memory': '16Gi', 'hugepages-2Mi': '1Gi', 'example.com/fpga': '1'}",
    # huge pages: the limit alone (the request defaults to it), beside cpu
    R0 + "['limits']['hugepages-1Gi'] = '2Gi'",
    # 16 resources each (an extended resource's request needs its limit: 3dd74a7)
    "x = {f'example.com/r{i}': '1e3' for i in range(14)}; "
    + R0
    + "['requests'].update(x); "
    + R0
    + "['limits'].update(x)",
    # another token key: fine where KServe's storage initializer fetches no hf:// weights
    "spec['model']['tokenSecretRef']['key'] = 'token'; spec['backend'] = 'deployment'",
    "spec['model']['tokenSecretRef']['key'] = 'token'; spec['allowedTiers'] = ['edge']",
    "spec['model']['tokenSecretRef']['key'] = 'token'; "
    "[v.pop('storageUri') for v in spec['model']['variants']]",
    "del spec['model']['tokenSecretRef']['key']",  # the default: HF_TOKEN
    # one entry in either map is enough (an empty map beside it is fine)
    R0 + "['requests'] = {}",
    # a floor one allowed variant meets, or one of the catalogue's quality (not known here)
    "spec['requirements']['minQuality'] = 0.7; "
    + V0
    + "['quality'] = 0.6; "
    + V1
    + "['quality'] = 0.7",
    "spec['requirements']['minQuality'] = 0.99; " + V0 + "['quality'] = 0.6",
    # an hf:// revision under KServe; a file path where KServe's storage initializer is not used
    V1 + "['storageUri'] = 'hf://org/repo:main'",
    V1
    + "['storageUri'] = 'hf://org/repo/model.gguf'; spec['backend'] = 'deployment'; "
    + V1
    + "['runtime'] = 'perllm-llamacpp-cuda'",
    V1 + "['storageUri'] = 'hf://org/repo/model.gguf'; spec['allowedTiers'] = ['edge']",
    # backend deployment: vLLM's --revision; llama.cpp's file at a revision (or on vLLM)
    "spec['backend'] = 'deployment'; " + V1 + "['storageUri'] = 'hf://org/repo:main'",
    "spec['backend'] = 'deployment'; " + V0 + "['storageUri'] = 'hf://org/r-GGUF:v2/m.gguf'",
    # a model-level file for the llama.cpp variant, the vLLM one with its own repository
    "spec['backend'] = 'deployment'; " + V0 + ".pop('storageUri'); "
    "spec['model']['storageUri'] = 'hf://org/r-GGUF/m.gguf'",
    "spec['backend'] = 'deployment'; "
    + V0
    + "['storageUri'] = 'hf://org/r:v2'; "
    + V0
    + "['runtime'] = 'perllm-vllm'",
]


@pytest.mark.parametrize("edit", AT_THE_LIMITS)
def test_a_spec_at_the_limits_is_admitted(crd: Kube, namespace: str, edit: str) -> None:
    r = _dry_run(crd, namespace, edit)
    assert r.returncode == 0, f"{edit}: {r.stderr}"
