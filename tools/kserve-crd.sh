#!/usr/bin/env bash
# KServe's own v1beta1 InferenceService CRD (config/crd/full) of a pinned release, fetched
# once through the Go module proxy into a version-keyed cache outside the repo (it is
# ~1 MB); prints its path. The e2e tests install it instead of a hand-written subset, so
# the API server validates rendered InferenceServices against KServe's real schema.
# The same module zip carries KServe's Python SDK: its generated models (kserve/models and
# kserve/configuration.py, nothing else) are extracted beside the CRD into sdk/, where
# tests/kserve_sdk.py checks rendered InferenceServices against them.
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
sdk="$CACHE/kserve-$KSERVE_VERSION/sdk"
if [ ! -s "$sdk/kserve/models/__init__.py" ]; then
  info="$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION")"
  python3 - "$info" "$KSERVE_VERSION" "$sdk" <<'PY'
import json, os, shutil, sys, zipfile
info, version, dest = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
prefix = f"github.com/kserve/kserve@{version}/python/kserve/"
tmp = dest + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(info["Zip"]) as z:
    for m in z.namelist():
        rel = m[len(prefix):] if m.startswith(prefix) else ""
        if rel == "kserve/configuration.py" or (rel.startswith("kserve/models/") and rel.endswith(".py")):
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(z.read(m))
if not os.path.exists(os.path.join(tmp, "kserve/models/v1beta1_inference_service.py")):
    sys.exit(f"kserve-crd: no SDK models in github.com/kserve/kserve@{version}")
shutil.rmtree(dest, ignore_errors=True)
os.rename(tmp, dest)
PY
fi
echo "$out"
