#!/usr/bin/env bash
# Build the real node's images without a Docker engine or a public registry, and cache each
# as a docker-archive under ~/.cache/mlflow-operator/images/<name>-<hash of its inputs>.tar:
#
#   pause        localhost/sandbox/pause:1              a static Go binary in an empty image
#   base         localhost/sandbox/debian-python:12     Debian 12 from Debian's packages (mmdebstrap)
#                                                        with a virtualenv first on PATH
#   churn        mlflow-operator-examples/churn-train:0.1.0
#                                                        examples/churn/Dockerfile on that base
#   operator     ghcr.io/mlflow-operator/mlflow-operator:0.1.0
#                                                        the repository's Dockerfile on that base
#   base13       localhost/sandbox/debian-python:13     Debian 13 (python3.13) the same way: the
#                                                        Kubernetes plugins need Python >= 3.12
#   mlflow       localhost/sandbox/mlflow:v3.17.2       images/mlflow/Dockerfile on the Debian 13
#                                                        base: the chart's embedded tracking server
#                                                        with the Kubernetes workspace and auth plugins
#
# Prints the archives, one per line, for the sandbox to import into containerd, and unpacks
# the mlflow image's root filesystem under ~/.cache/mlflow-operator/rootfs/ for the sandbox's
# workspace server (its path in $SANDBOX_DIR/node/mlflow-rootfs). Needs root
# (mmdebstrap, buildah); buildah keeps its storage under the cache, not in /var/lib.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${MLFLOW_OPERATOR_CACHE:-$HOME/.cache/mlflow-operator}/images"
STATE="${SANDBOX_DIR:-$ROOT/.sandbox}"
mkdir -p "$CACHE" "$STATE/node"
LOG="$STATE/logs/images.log"
mkdir -p "$(dirname "$LOG")"
: > "$LOG"

fail() { echo "[images] FAILED: $*" >&2; echo "[images] last lines of $LOG:" >&2; tail -n 30 "$LOG" >&2; exit 1; }
run() { echo "+ $*" >>"$LOG"; "$@" >>"$LOG" 2>&1 || fail "$*"; }
[[ $(id -u) -eq 0 ]] || { echo "[images] needs root (mmdebstrap and buildah): run as root" >&2; exit 1; }
# buildah writes a few files of its own in /var/lib/containers, /etc/cni/net.d and
# /run/containers: it gets private ones, in a mount namespace of its own, and directories
# that had to be created as mount points are removed again afterwards.
PRIVATE_DIRS=(/var/lib/containers /etc/cni/net.d /run/containers)
if [[ -z "${SANDBOX_IMAGES_PRIVATE:-}" ]]; then
  created=()
  for dir in "${PRIVATE_DIRS[@]}"; do
    probe="$dir"; while [[ ! -e "$probe" ]]; do top="$probe"; probe="$(dirname "$probe")"; done
    [[ -e "$dir" ]] || { created+=("${top:-$dir}"); mkdir -p "$dir"; }
    top=""
  done
  status=0
  SANDBOX_IMAGES_PRIVATE=1 unshare --mount --propagation private -- "$0" "$@" || status=$?
  for dir in "${created[@]}"; do rm -rf --one-file-system "$dir"; done
  exit $status
fi
private="$STATE/node/buildah-private"
for dir in "${PRIVATE_DIRS[@]}"; do
  mkdir -p "$private$dir"
  mount --bind "$private$dir" "$dir"
done
for tool in buildah mmdebstrap go; do
  command -v "$tool" >/dev/null || { echo "[images] '$tool' is missing: run sandbox/node/install-packages.sh" >&2; exit 1; }
done

# A private containers-storage and no registries: nothing is pulled from anywhere.
cat > "$CACHE/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$STATE/node/buildah-run"
CONF
cat > "$CACHE/registries.conf" <<'CONF'
unqualified-search-registries = []
CONF
export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf" CONTAINERS_REGISTRIES_CONF="$CACHE/registries.conf"
BUILDAH=(buildah --storage-driver overlay --root "$CACHE/storage" --runroot "$STATE/node/buildah-run")

digest() { sha256sum | cut -c1-16; }

# Make sure buildah's storage holds `name` (from its cached archive after a cache wipe).
ensure_in_storage() {
  local name="$1" archive="$2"
  "${BUILDAH[@]}" inspect --type image "$name" >/dev/null 2>&1 || run "${BUILDAH[@]}" pull "docker-archive:$archive"
}

# Commit a working container as `name` and write it to `archive`.
commit_to() {
  local container="$1" name="$2" archive="$3"
  run "${BUILDAH[@]}" commit --rm "$container" "$name"
  rm -f "$archive.tmp"
  run "${BUILDAH[@]}" push "$name" "docker-archive:$archive.tmp:$name"
  mv "$archive.tmp" "$archive"
}

# ---- pause
PAUSE=localhost/sandbox/pause:1
pause_hash=$(cat "$ROOT/sandbox/node/pause/main.go" "$ROOT/sandbox/node/pause/go.mod" | digest)
pause_tar="$CACHE/pause-$pause_hash.tar"
if [[ ! -f "$pause_tar" ]]; then
  echo "[images] building $PAUSE" >&2
  work=$(mktemp -d)
  (cd "$ROOT/sandbox/node/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause" .) >>"$LOG" 2>&1 \
    || fail "go build sandbox/node/pause"
  c=$("${BUILDAH[@]}" from scratch)
  run "${BUILDAH[@]}" copy "$c" "$work/pause" /pause
  run "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  commit_to "$c" "$PAUSE" "$pause_tar"
  rm -rf "$work"
fi

# A Debian base from Debian's packages: python3 with a virtualenv first on PATH.
build_base() {
  local suite="$1" name="$2" archive="$3"
  echo "[images] building $name (mmdebstrap $suite)" >&2
  local work
  work=$(mktemp -d)
  run mmdebstrap --variant=minbase --include="$PACKAGES" \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
    "$suite" "$work/rootfs.tar" "$MIRROR" </dev/null
  local c
  c=$("${BUILDAH[@]}" from scratch)
  run "${BUILDAH[@]}" add "$c" "$work/rootfs.tar" /
  run "${BUILDAH[@]}" config --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["python3"]' "$c"
  commit_to "$c" "$name" "$archive"
  rm -rf "$work"
}

# ---- base: Debian 12 from Debian's packages
BASE=localhost/sandbox/debian-python:12
MIRROR="http://deb.debian.org/debian"
PACKAGES="python3,python3-venv,python-is-python3,ca-certificates,passwd"
base_hash=$(echo "bookworm $MIRROR $PACKAGES venv:/opt/venv" | digest)
base_tar="$CACHE/base-$base_hash.tar"
[[ -f "$base_tar" ]] || build_base bookworm "$BASE" "$base_tar"
ensure_in_storage "$BASE" "$base_tar"

# ---- base13: Debian 13 (python3.13), for what needs Python >= 3.12
BASE13=localhost/sandbox/debian-python:13
base13_hash=$(echo "trixie $MIRROR $PACKAGES venv:/opt/venv" | digest)
base13_tar="$CACHE/base13-$base13_hash.tar"
[[ -f "$base13_tar" ]] || build_base trixie "$BASE13" "$base13_tar"
ensure_in_storage "$BASE13" "$base13_tar"

# ---- the example's training image, from its own Dockerfile
CHURN=mlflow-operator-examples/churn-train:0.1.0
churn_hash=$( (cd "$ROOT/examples/churn" && cat Dockerfile requirements.txt train.py train_distributed.py; echo "$base_hash") | digest)
churn_tar="$CACHE/churn-$churn_hash.tar"
if [[ ! -f "$churn_tar" ]]; then
  echo "[images] building $CHURN (buildah bud examples/churn)" >&2
  # pip inside the build verifies TLS with this machine's CA bundle (a proxy may intercept).
  ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  run "${BUILDAH[@]}" bud --network host --isolation chroot --layers=false \
    --build-arg BASE_IMAGE="$BASE" --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
    --volume "$ca:/etc/ssl/host-ca.crt:ro" \
    -t "$CHURN" "$ROOT/examples/churn"
  rm -f "$churn_tar.tmp"
  run "${BUILDAH[@]}" push "$CHURN" "docker-archive:$churn_tar.tmp:$CHURN"
  mv "$churn_tar.tmp" "$churn_tar"
fi

# ---- the operator, from the repository's Dockerfile (the chart's default image name)
OPERATOR=ghcr.io/mlflow-operator/mlflow-operator:0.1.0
operator_hash=$( (cd "$ROOT" && cat Dockerfile pyproject.toml constraints.txt scripts/install-operator.sh \
  $(find operator -name '*.py' | sort); echo "$base_hash") | digest)
operator_tar="$CACHE/operator-$operator_hash.tar"
if [[ ! -f "$operator_tar" ]]; then
  echo "[images] building $OPERATOR (buildah bud, the repository's Dockerfile)" >&2
  ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  run "${BUILDAH[@]}" bud --network host --isolation chroot --layers=false \
    --build-arg BASE_IMAGE="$BASE" --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
    --volume "$ca:/etc/ssl/host-ca.crt:ro" \
    -t "$OPERATOR" "$ROOT"
  rm -f "$operator_tar.tmp"
  run "${BUILDAH[@]}" push "$OPERATOR" "docker-archive:$operator_tar.tmp:$OPERATOR"
  mv "$operator_tar.tmp" "$operator_tar"
fi

# ---- the chart's embedded MLflow server (values.yaml keeps the MLflow project's public image)
MLFLOW=localhost/sandbox/mlflow:v3.17.2
mlflow_hash=$( (cd "$ROOT" && cat images/mlflow/Dockerfile images/mlflow/requirements.txt constraints.txt; echo "$base13_hash") | digest)
mlflow_tar="$CACHE/mlflow-$mlflow_hash.tar"
if [[ ! -f "$mlflow_tar" ]]; then
  echo "[images] building $MLFLOW (buildah bud, images/mlflow/Dockerfile)" >&2
  ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  run "${BUILDAH[@]}" bud --network host --isolation chroot --layers=false \
    --build-arg BASE_IMAGE="$BASE13" --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
    --volume "$ca:/etc/ssl/host-ca.crt:ro" \
    -f "$ROOT/images/mlflow/Dockerfile" -t "$MLFLOW" "$ROOT"
  rm -f "$mlflow_tar.tmp"
  run "${BUILDAH[@]}" push "$MLFLOW" "docker-archive:$mlflow_tar.tmp:$MLFLOW"
  mv "$mlflow_tar.tmp" "$mlflow_tar"
fi

# ---- the same server's root filesystem, for the sandbox's workspace server (a host process
# chrooted into it: the sandbox's own Python is older than the plugins need)
rootfs="${CACHE%/images}/rootfs/mlflow-$mlflow_hash"
if [[ ! -d "$rootfs/rootfs" ]]; then
  echo "[images] unpacking $MLFLOW for the sandbox's workspace server (umoci)" >&2
  work=$(mktemp -d)
  run skopeo copy "docker-archive:$mlflow_tar" "oci:$work/oci:mlflow"
  rm -rf "$rootfs.tmp"
  run umoci unpack --image "$work/oci:mlflow" "$rootfs.tmp"
  mv "$rootfs.tmp" "$rootfs"
  rm -rf "$work"
fi
echo "$rootfs/rootfs" > "$STATE/node/mlflow-rootfs"

printf '%s\n' "$pause_tar" "$churn_tar" "$operator_tar" "$mlflow_tar"
