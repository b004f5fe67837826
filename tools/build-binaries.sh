#!/usr/bin/env bash
# Build the local control plane's binaries into a version-keyed cache outside the repo,
# skipping every one that is already there (docs/development.md), and install Prometheus
# from Debian if missing. Usage: tools/build-binaries.sh [k8s] [etcd] [kwok] [helm] [prometheus]
# [llamacpp] [promsd] (default: all). Prints one line per component with the seconds it took.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../perllm/devcluster/versions.env
source "$ROOT/perllm/devcluster/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"
CACHE="${PERLLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perllm/bin}"
mkdir -p "$CACHE"

# One build at a time per cache (make cluster-up and .ci/run may race).
exec 9>"$CACHE/.build.lock"
flock 9

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# timed NAME CMD...: run CMD, report wall time.
timed() {
  local name=$1 t0; shift
  t0=$(date +%s)
  "$@"
  log "$name built in $(( $(date +%s) - t0 ))s"
}

build_k8s() {
  local bin="$CACHE/k8s-$K8S_VERSION" minor ldf p
  grep -q "k8s.io/kubernetes v${K8S_VERSION#v}\$\|k8s.io/kubernetes $K8S_VERSION\$" "$ROOT/tools/k8sbin/go.mod" \
    || { log "tools/k8sbin/go.mod does not pin k8s.io/kubernetes $K8S_VERSION"; exit 1; }
  if [ ! -x "$bin/k8s" ]; then
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    # Stamp versions: kubectl/kopf skew checks and kwokctl read them (§6.2).
    ldf="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    mkdir -p "$bin"
    log "building kube-apiserver/controller-manager/scheduler/kubectl $K8S_VERSION (cold: ~15-30 min on 2 cores)"
    (cd "$ROOT/tools/k8sbin" && timed k8s go build -trimpath -ldflags "$ldf" -o "$bin/k8s.tmp" .)
    mv "$bin/k8s.tmp" "$bin/k8s"   # atomic: a half-written binary never looks cached
  fi
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sfn k8s "$bin/$c"; done
}

build_etcd() {
  local bin="$CACHE/etcd-$ETCD_VERSION"
  [ -x "$bin/etcd" ] && return
  mkdir -p "$bin"
  log "building etcd $ETCD_VERSION"
  (cd "$ROOT/tools/etcdbin" && timed etcd go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" .)
  mv "$bin/etcd.tmp" "$bin/etcd"
}

# go_install NAME VERSION PKG [LDFLAGS] [RECIPE]: plain `go install` (no replace directives
# upstream). LDFLAGS may be a function name (called in the build directory, printing the
# flags). RECIPE names the build recipe: a binary cached without the same RECIPE in its
# .recipe marker is rebuilt (the cache directory stays keyed by version only, which is where
# perllm.devcluster.binaries looks).
go_install() {
  local name=$1 version=$2 pkg=$3 extra=${4:-} recipe=${5:-} bin="$CACHE/$1-$2" tmp
  if [ -x "$bin/$name" ] && [ "$(cat "$bin/.recipe" 2>/dev/null)" = "$recipe" ]; then
    return
  fi
  tmp="$CACHE/.tmp-$name-$version"
  rm -rf "$tmp" && mkdir -p "$tmp"
  log "building $name $version${recipe:+ ($recipe)}"
  if [ -n "$extra" ] && declare -F "$extra" >/dev/null; then
    extra=$(cd "$tmp" && GOFLAGS= "$extra")
  fi
  # Outside any module, so `go install pkg@version` uses only the upstream go.mod.
  (cd "$tmp" && GOFLAGS= GOBIN="$tmp" timed "$name" go install -trimpath -ldflags "-s -w $extra" "$pkg@$version")
  mkdir -p "$bin" && mv "$tmp/$name" "$bin/$name.new" && mv "$bin/$name.new" "$bin/$name"
  if [ -n "$recipe" ]; then echo "$recipe" >"$bin/.recipe"; else rm -f "$bin/.recipe"; fi
  rm -rf "$tmp"
}

# What Helm's own Makefile stamps into a release build: the version, a clean tree, and the
# Kubernetes version that `helm template`/`helm lint` assume without a cluster or
# --kube-version (1.<minor of its k8s.io/client-go>; unstamped it is v1.20.0, which a chart
# with `kubeVersion: >=1.29.0-0` refuses).
HELM_RECIPE="release-ldflags-1"
helm_ldflags() {
  local gomod cg major minor
  gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": *"\(.*\)".*/\1/p')
  cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")     # e.g. v0.34.2
  [ -n "$cg" ] || { log "cannot read k8s.io/client-go from Helm's go.mod ($gomod)"; exit 1; }
  major=$(( $(echo "${cg#v}" | cut -d. -f1) + 1 ))
  minor=$(echo "$cg" | cut -d. -f2)
  local p=helm.sh/helm/v3
  printf '%s ' \
    "-X $p/internal/version.version=$HELM_VERSION" \
    "-X $p/internal/version.metadata=" \
    "-X $p/internal/version.gitTreeState=clean" \
    "-X $p/pkg/chartutil.k8sVersionMajor=$major" \
    "-X $p/pkg/chartutil.k8sVersionMinor=$minor" \
    "-X $p/pkg/lint/rules.k8sVersionMajor=$major" \
    "-X $p/pkg/lint/rules.k8sVersionMinor=$minor"
}

install_prometheus() {
  command -v prometheus >/dev/null && return
  command -v apt-get >/dev/null || { log "prometheus missing and no apt-get: install Prometheus 2.x"; exit 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing prometheus from Debian"
  # Keep the package from starting a system service on :9090 (tests run their own).
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d; guard=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ -z "$guard" ] || $sudo rm -f /usr/sbin/policy-rc.d
}

# apt_install CMD PKG...: install PKGs from Debian unless CMD is already on PATH.
apt_install() {
  local cmd=$1; shift
  command -v "$cmd" >/dev/null && return
  command -v apt-get >/dev/null || { log "$cmd missing and no apt-get: install $*"; exit 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing $* from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# llama.cpp's llama-server (real-model tests, docs/router.md): its C++ sources come from the
# llama-cpp-python sdist on PyPI (which vendors llama.cpp), checked against the pinned
# sha256; CPU only, no web UI, no network features. ~5-10 min on 2 cores.
build_llamacpp() {
  local bin="$CACHE/llama-server-$LLAMACPP_VERSION" tmp src
  [ -x "$bin/llama-server" ] && return
  apt_install cmake cmake
  apt_install g++ g++
  tmp="$CACHE/.tmp-llamacpp-$LLAMACPP_VERSION"
  rm -rf "$tmp" && mkdir -p "$tmp"
  log "fetching llama-cpp-python $LLAMACPP_VERSION sdist from PyPI"
  # PEP 691 simple index (what pip reads); the file's sha256 must equal the pinned one.
  python3 - "$LLAMACPP_VERSION" "$LLAMACPP_SDIST_SHA256" "$tmp/sdist.tar.gz" <<'PY'
import hashlib, json, sys, urllib.request
version, sha, out = sys.argv[1:]
req = urllib.request.Request(
    "https://pypi.org/simple/llama-cpp-python/",
    headers={"Accept": "application/vnd.pypi.simple.v1+json"},
)
index = json.load(urllib.request.urlopen(req, timeout=60))
name = f"llama_cpp_python-{version}.tar.gz"
url = next((f["url"] for f in index["files"] if f["filename"] == name), None)
if url is None:
    sys.exit(f"{name} is not on PyPI's simple index")
data = urllib.request.urlopen(url, timeout=900).read()
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f"{name}: sha256 {got}, expected {sha}")
open(out, "wb").write(data)
PY
  tar -xzf "$tmp/sdist.tar.gz" -C "$tmp"
  src="$tmp/llama_cpp_python-$LLAMACPP_VERSION/vendor/llama.cpp"
  log "building llama-server (llama-cpp-python $LLAMACPP_VERSION; ~5-10 min on 2 cores)"
  local t0; t0=$(date +%s)
  cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF >"$tmp/configure.log" 2>&1 || { tail -30 "$tmp/configure.log" >&2; exit 1; }
  cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >"$tmp/build.log" 2>&1 \
    || { tail -30 "$tmp/build.log" >&2; exit 1; }
  log "llama-server built in $(( $(date +%s) - t0 ))s"
  mkdir -p "$bin" && cp "$tmp/build/bin/llama-server" "$bin/llama-server.new"
  mv "$bin/llama-server.new" "$bin/llama-server"
  rm -rf "$tmp"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(k8s etcd kwok helm prometheus llamacpp promsd)
for c in "${components[@]}"; do
  case "$c" in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    kwok) go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    # Stamped like a release build (helm_ldflags); unstamped, `helm version` says only
    # "v3.19" and `helm template` assumes Kubernetes v1.20.0.
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm_ldflags "$HELM_RECIPE" ;;
    prometheus) install_prometheus ;;
    llamacpp) build_llamacpp ;;
    # Debian's Prometheus lacks Kubernetes service discovery (tests/e2e/test_chart_scrape.py).
    promsd) go_install prometheus "$PROMETHEUS_SD_VERSION" github.com/prometheus/prometheus/cmd/prometheus ;;
    *) log "unknown component $c"; exit 2 ;;
  esac
done
log "binaries ready in $CACHE"
