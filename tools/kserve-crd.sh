#!/usr/bin/env bash
# KServe's own v1beta1 InferenceService CRD (config/crd/full) of a pinned release, fetched
# once through the Go module proxy into a version-keyed cache outside the repo (it is
# ~1 MB); prints its path. The e2e tests install it instead of a hand-written subset, so
# the API server validates rendered InferenceServices against KServe's real schema.
# Usage: tools/kserve-crd.sh            (KSERVE_VERSION overrides the pinned release)
set -euo pipefail

KSERVE_VERSION="${KSERVE_VERSION:-v0.15.2}"
CACHE="${PERLLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perllm/bin}"
FILE="serving.kserve.io_inferenceservices.yaml"
out="$CACHE/kserve-$KSERVE_VERSION/$FILE"

if [ ! -s "$out" ]; then
  command -v go >/dev/null || { echo "kserve-crd: go is needed to fetch KServe $KSERVE_VERSION" >&2; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "[kserve-crd] fetching github.com/kserve/kserve@$KSERVE_VERSION" >&2
  # Outside any module: `go mod download` only fetches (and checks the sum database).
  info="$(cd "$tmp" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION")"
  python3 - "$info" "$KSERVE_VERSION" "$FILE" "$tmp/crd.yaml" <<'PY'
import json, sys, zipfile
info, version, name, dest = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
member = f"github.com/kserve/kserve@{version}/config/crd/full/{name}"
with zipfile.ZipFile(info["Zip"]) as z, open(dest, "wb") as f:
    f.write(z.read(member))
PY
  grep -q "name: inferenceservices.serving.kserve.io" "$tmp/crd.yaml" \
    || { echo "kserve-crd: $FILE of $KSERVE_VERSION is not the InferenceService CRD" >&2; exit 1; }
  mkdir -p "$(dirname "$out")"
  mv "$tmp/crd.yaml" "$out.tmp" && mv "$out.tmp" "$out"   # atomic: never half a file
fi
echo "$out"
