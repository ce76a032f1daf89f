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
  "kubernetes:k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  "etcd:."
  "kwok:sigs.k8s.io/kwok/cmd/kwok"
  "helm:helm.sh/helm/v3/cmd/helm"
)

command -v go >/dev/null || { echo "build-binaries: 'go' is not on PATH" >&2; exit 1; }

for entry in "${MODULES[@]}"; do
  module="${entry%%:*}"
  packages="${entry#*:}"
  dir="$ROOT/sandbox/build/$module"
  hash="$(cd "$dir" && cat go.mod go.sum $(ls *.go 2>/dev/null) | sha256sum | cut -c1-16)"
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
      cmd=(go build -trimpath -ldflags "-s -w" -o "$tmp/$module" .)
    else
      # shellcheck disable=SC2206
      cmd=(go build -trimpath -ldflags "-s -w" -o "$tmp/" $packages)
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
