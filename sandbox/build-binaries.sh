#!/usr/bin/env bash
# Build the sandbox's binaries with `go` from the modules pinned under sandbox/build/,
# cache them under ~/.cache/mlflow-operator/bin/<module>-<hash>/ and link them into
# .sandbox/bin/. A module is rebuilt only when its go.mod, go.sum or .go files change.
#
# Nothing is downloaded except Go modules from the module proxy. A failed build stops
# here with the module, the command and the end of its log: there is no fallback.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLFLOW_OPERATOR_CACHE:-$HOME/.cache/mlflow-operator}"
STATE="${SANDBOX_DIR:-$ROOT/.sandbox}"
mkdir -p "$CACHE/bin" "$STATE/bin"

# module directory : packages to build (binary name = last path element)
MODULES=(
  "kubernetes:k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet"
  "etcd:."
  "kwok:sigs.k8s.io/kwok/cmd/kwok"
  "helm:helm.sh/helm/v3/cmd/helm"
  # The kstatus library as Flux reads objects (tests/e2e: every kind InProgress until Ready).
  "kstatus:."
  # The S3-compatible object store of the embedded MLflow server's artifacts (chart tests).
  "versitygw:github.com/versity/versitygw/cmd/versitygw"
)

command -v go >/dev/null || { echo "build-binaries: 'go' is not on PATH" >&2; exit 1; }

# Version stamps, as the projects' own release builds set them (otherwise the API server
# reports v0.0.0 and tools that check the cluster's version, like helm, refuse it).
module_version() { awk -v m="$1" '$1 == m || ($1 == "require" && $2 == m) {print ($1 == "require" ? $3 : $2); exit}' "$2"; }
ldflags_for() {
  local module="$1" gomod="$ROOT/sandbox/build/$1/go.mod" v
  case "$module" in
    kubernetes)
      v="$(module_version k8s.io/kubernetes "$gomod")"
      local minor="${v#v1.}"; minor="${minor%%.*}"
      local flags=""
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags="$flags -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags="$flags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$flags" ;;
    helm) echo "-X helm.sh/helm/v3/internal/version.version=$(module_version helm.sh/helm/v3 "$gomod")" ;;
    *) echo "" ;;
  esac
}

for entry in "${MODULES[@]}"; do
  module="${entry%%:*}"
  packages="${entry#*:}"
  dir="$ROOT/sandbox/build/$module"
  ldflags="-s -w $(ldflags_for "$module")"
  hash="$( (cd "$dir" && cat go.mod go.sum $(ls *.go 2>/dev/null); echo "$ldflags") | sha256sum | cut -c1-16)"
  out="$CACHE/bin/$module-$hash"
  if [[ "$packages" == "." ]]; then names="$module"; else names=""; for p in $packages; do names="$names ${p##*/}"; done; fi

  complete=1
  for name in $names; do [[ -x "$out/$name" ]] || complete=0; done
  if [[ $complete -eq 0 ]]; then
    echo "[build] $module: building$( [[ "$packages" == "." ]] || echo " $names") (cache miss: $out)"
    start=$(date +%s)
    tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    logfile="$CACHE/bin/$module-build.log"
    if [[ "$packages" == "." ]]; then
      cmd=(go build -trimpath -ldflags "$ldflags" -o "$tmp/$module" .)
    else
      # shellcheck disable=SC2206
      cmd=(go build -trimpath -ldflags "$ldflags" -o "$tmp/" $packages)
    fi
    if ! (cd "$dir" && GOFLAGS=-mod=readonly "${cmd[@]}") >"$logfile" 2>&1; then
      echo "[build] FAILED: $module in $dir" >&2
      echo "[build] command: ${cmd[*]}" >&2
      echo "[build] last lines of $logfile:" >&2
      tail -n 40 "$logfile" >&2
      rm -rf "$tmp"
      exit 1
    fi
    rm -rf "$out"; mv "$tmp" "$out"
    echo "[build] $module: built in $(( $(date +%s) - start ))s"
  fi
  for name in $names; do ln -sfn "$out/$name" "$STATE/bin/$name"; done
done
echo "[build] binaries ready in $STATE/bin: $(ls "$STATE/bin" | tr '\n' ' ')"
