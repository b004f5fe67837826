#!/usr/bin/env bash
# Build the local control plane's binaries into a version-keyed cache outside the repo,
# skipping every one that is already there (docs/development.md), and install Prometheus
# from Debian if missing. Usage: tools/build-binaries.sh [k8s] [etcd] [kwok] [helm] [prometheus]
# (default: all). Prints one line per component with the seconds it took.
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

# go_install NAME VERSION PKG [LDFLAGS]: plain `go install` (no replace directives upstream).
go_install() {
  local name=$1 version=$2 pkg=$3 extra=${4:-} bin="$CACHE/$1-$2" tmp
  [ -x "$bin/$name" ] && return
  tmp="$CACHE/.tmp-$name-$version"
  rm -rf "$tmp" && mkdir -p "$tmp"
  log "building $name $version"
  # Outside any module, so `go install pkg@version` uses only the upstream go.mod.
  (cd "$tmp" && GOFLAGS= GOBIN="$tmp" timed "$name" go install -trimpath -ldflags "-s -w $extra" "$pkg@$version")
  mkdir -p "$bin" && mv "$tmp/$name" "$bin/$name" && rm -rf "$tmp"
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

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(k8s etcd kwok helm prometheus)
for c in "${components[@]}"; do
  case "$c" in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    kwok) go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    # Unstamped, `helm version` says only "v3.19".
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
            "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    prometheus) install_prometheus ;;
    *) log "unknown component $c"; exit 2 ;;
  esac
done
log "binaries ready in $CACHE"
