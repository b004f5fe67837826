#!/usr/bin/env bash
# The chart on kind, step by step: what .github/workflows/e2e-kind.yaml runs, for a user with
# a container engine (docker, or podman via KIND_EXPERIMENTAL_PROVIDER=podman).
#
# Usage: tools/kind-e2e.sh [--no-engine] [--components "k8s etcd kwok helm prometheus llamacpp promsd"] [STEP...]
#
# Steps (default: all, in this order):
#   binaries   tools/build-binaries.sh COMPONENTS (default: everything the e2e tier needs)
#   lint       helm lint --strict of the default values and of each charts/perllm/ci profile
#   template   helm template of each profile (no --kube-version: the pinned Helm's default)
#   image      build images/Containerfile as $IMAGE_REPO:$IMAGE_TAG (+ the chart's appVersion)
#   cluster    create the kind cluster $KIND_CLUSTER (kept if it exists)
#   load       kind load docker-image into it
#   profiles   per profile: label the node, helm install --wait with the built image, smoke
#              (the in-cluster operator makes an LLMService's Deployment, the in-cluster
#              perllm-scheduler takes its pod, the extender answers), helm uninstall
#   e2e        the e2e tier (pytest -m e2e tests/e2e) with the local harness attached
#   down       delete the kind cluster
# --no-engine: only the steps that need no container engine (binaries, lint, template);
#   naming another step with it is an error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=../perllm/devcluster/versions.env
source perllm/devcluster/versions.env
CACHE="${PERLLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perllm/bin}"
CHART=charts/perllm
KIND_CLUSTER="${KIND_CLUSTER:-perllm-e2e}"
IMAGE_REPO="${IMAGE_REPO:-ghcr.io/perllm/perllm}"
IMAGE_TAG="${IMAGE_TAG:-e2e}"
ENGINE="${ENGINE:-docker}"
NAMESPACE="${NAMESPACE:-perllm-system}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
RUN_DIR="${RUN_DIR:-${RUNNER_TEMP:-/tmp}/perllm-kind}"
HELM="${HELM:-$CACHE/helm-$HELM_VERSION/helm}"
KUBECTL="${KUBECTL:-$CACHE/k8s-$K8S_VERSION/kubectl}"
COMPONENTS="k8s etcd kwok helm prometheus llamacpp promsd"
NO_ENGINE=""
ALL_STEPS=(binaries lint template image cluster load profiles e2e)
NO_ENGINE_STEPS=(binaries lint template)

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
profiles() { echo default; for f in "$CHART"/ci/*-values.yaml; do basename "$f"; done; }
values_args() { [ "$1" = default ] || printf -- '-f\n%s\n' "$CHART/ci/$1"; }
app_version() { sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml"; }
need_helm() { [ -x "$HELM" ] || die "no Helm at $HELM: run the binaries step (tools/build-binaries.sh helm)"; }
kubectl_() { "$KUBECTL" --context "kind-$KIND_CLUSTER" "$@"; }

step_lint() {
  need_helm
  local p
  while read -r p; do
    log "helm lint --strict ($p)"
    mapfile -t v < <(values_args "$p")
    "$HELM" lint --strict "$CHART" "${v[@]}"
  done < <(profiles)
}

step_binaries() {
  # shellcheck disable=SC2086  # a word list on purpose
  tools/build-binaries.sh $COMPONENTS
}

step_template() {
  need_helm
  local p out
  while read -r p; do
    mapfile -t v < <(values_args "$p")
    out=$("$HELM" template perllm "$CHART" -n "$NAMESPACE" "${v[@]}")
    log "helm template ($p): $(grep -c '^kind:' <<<"$out") objects"
  done < <(profiles)
}

step_image() {
  log "building $IMAGE_REPO:$IMAGE_TAG with $ENGINE"
  "$ENGINE" build -f images/Containerfile -t "$IMAGE_REPO:$IMAGE_TAG" \
    -t "$IMAGE_REPO:$(app_version)" .
}

step_cluster() {
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER" && { log "kind cluster $KIND_CLUSTER exists"; return; }
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
}

step_load() {
  # Both tags: ours, and the chart's default (appVersion), which tests/e2e/test_chart.py uses.
  kind load docker-image --name "$KIND_CLUSTER" "$IMAGE_REPO:$IMAGE_TAG" "$IMAGE_REPO:$(app_version)"
}

# Labels the profiles' nodeSelectors and the extender's node model expect (docs/helm.md).
label_nodes() {
  local tier=$1 n
  for n in $(kubectl_ get nodes -o name); do
    kubectl_ label --overwrite "$n" "perllm.io/tier=$tier" perllm.io/hardware=a100-80gb-sxm \
      node-role.kubernetes.io/control-plane=true
    kubectl_ annotate --overwrite "$n" perllm.io/link-bandwidth-mbps=10000
  done
}

smoke() {
  local rel=$1 ns=perllm-smoke pod
  kubectl_ create namespace "$ns" --dry-run=client -o yaml | kubectl_ apply -f -
  kubectl_ apply -n "$ns" -f manifests/batch-summariser.yaml
  log "waiting for the in-cluster operator's Deployment child"
  for _ in $(seq 60); do kubectl_ get -n "$ns" deployment/batch-summariser >/dev/null 2>&1 && break; sleep 2; done
  kubectl_ get -n "$ns" deployment/batch-summariser -o jsonpath='{.spec.template.spec.schedulerName}' \
    | grep -qx perllm-scheduler || die "the operator's pod template does not name perllm-scheduler"
  log "waiting for perllm-scheduler to act on the model-server pod"
  for _ in $(seq 60); do
    pod=$(kubectl_ get -n "$ns" pods -l perllm.io/service=batch-summariser -o name | head -1)
    # Bound, or a FailedScheduling event from perllm-scheduler (kind has no GPU).
    if [ -n "$pod" ] && { [ -n "$(kubectl_ get -n "$ns" "$pod" -o jsonpath='{.spec.nodeName}')" ] \
        || kubectl_ get events -n "$ns" -o jsonpath='{range .items[*]}{.reportingComponent}{.source.component} {.reason}{"\n"}{end}' \
           | grep -q '^perllm-scheduler'; }; then
      break
    fi
    sleep 2
  done
  kubectl_ get events -n "$ns" -o wide | grep -i perllm-scheduler || die "perllm-scheduler never handled $pod"
  # Its plain metrics port: the http port is HTTPS that wants kube-scheduler's client
  # certificate (extender.tls, on in every profile).
  kubectl_ get --raw "/api/v1/namespaces/$NAMESPACE/services/$rel-extender:metrics/proxy/healthz" \
    || die "the extender does not answer /healthz"
  kubectl_ delete namespace "$ns" --wait=true --timeout=120s
}

step_profiles() {
  need_helm
  local p rel=perllm tier
  while read -r p; do
    case "$p" in edge*) tier=edge ;; *) tier=cloud ;; esac
    label_nodes "$tier"
    # The profiles' routers front `chat` in team-a: their Role lives there.
    kubectl_ create namespace team-a --dry-run=client -o yaml | kubectl_ apply -f -
    mapfile -t v < <(values_args "$p")
    log "helm install ($p) with $IMAGE_REPO:$IMAGE_TAG"
    if ! "$HELM" --kube-context "kind-$KIND_CLUSTER" install "$rel" "$CHART" -n "$NAMESPACE" \
        --create-namespace "${v[@]}" --set "image.repository=$IMAGE_REPO,image.tag=$IMAGE_TAG" \
        --set image.pullPolicy=Never --wait --timeout 5m; then
      kubectl_ get pods -n "$NAMESPACE" -o wide || true
      kubectl_ describe pods -n "$NAMESPACE" | tail -n 80 || true
      die "install of $p failed"
    fi
    kubectl_ get deploy,ds,pods -n "$NAMESPACE" -o wide
    smoke "$rel"
    "$HELM" --kube-context "kind-$KIND_CLUSTER" uninstall "$rel" -n "$NAMESPACE" --wait
  done < <(profiles)
  # Give the nodes back as kind made them: the e2e tier brings its own (KWOK) PerLLM nodes.
  local n
  for n in $(kubectl_ get nodes -o name); do
    kubectl_ label "$n" perllm.io/tier- perllm.io/hardware-
    kubectl_ label --overwrite "$n" node-role.kubernetes.io/control-plane=
    kubectl_ annotate "$n" perllm.io/link-bandwidth-mbps-
  done
}

step_e2e() {
  local kubeconfig="$RUN_DIR/kind.kubeconfig"
  mkdir -p "$RUN_DIR"
  kind get kubeconfig --name "$KIND_CLUSTER" >"$kubeconfig"
  "$PYTHON" -m perllm.devcluster cluster up --attach "$kubeconfig" --no-prometheus --run-dir "$RUN_DIR/harness"
  local rc=0
  KUBECONFIG="$kubeconfig" PERLLM_E2E=1 "$PYTHON" -m pytest -q -m e2e tests/e2e || rc=$?
  [ $rc = 0 ] || tail -n 100 "$RUN_DIR"/harness/logs/*.log || true
  "$PYTHON" -m perllm.devcluster cluster down --run-dir "$RUN_DIR/harness" || true
  return $rc
}

step_down() { kind delete cluster --name "$KIND_CLUSTER"; }

steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-engine | --dry-run) NO_ENGINE=1 ;;
    --components) COMPONENTS=$2; shift ;;
    --components=*) COMPONENTS=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) steps+=("$1") ;;
  esac
  shift
done
if [ ${#steps[@]} -eq 0 ]; then
  if [ -n "$NO_ENGINE" ]; then steps=("${NO_ENGINE_STEPS[@]}"); else steps=("${ALL_STEPS[@]}"); fi
fi
for s in "${steps[@]}"; do
  declare -F "step_$s" >/dev/null || die "unknown step $s (steps: ${ALL_STEPS[*]} down)"
  if [ -n "$NO_ENGINE" ] && [[ " ${NO_ENGINE_STEPS[*]} " != *" $s "* ]]; then
    die "step $s needs a container engine (--no-engine runs: ${NO_ENGINE_STEPS[*]})"
  fi
done
for s in "${steps[@]}"; do
  log "== $s"
  "step_$s"
done
log "done: ${steps[*]}"
