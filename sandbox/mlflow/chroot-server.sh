#!/usr/bin/env bash
# Run the sandbox's workspace server: `mlflow server` from the chart's server image (its root
# filesystem unpacked by build-images.sh), as the image's non-root user, in a mount namespace
# of its own, on the host's network (it listens on 127.0.0.1 only). The sandbox's own Python
# is older than the Kubernetes plugins need, so the server runs on the image's Debian 13.
#
#   chroot-server.sh ROOTFS_FILE DATA_DIR KUBECONFIG -- <mlflow server arguments>
#
# ROOTFS_FILE names the unpacked root filesystem (build-images.sh writes it; it changes when
# the image does).
# DATA_DIR (sqlite store, artifacts) is mounted at /var/lib/mlflow and KUBECONFIG at
# /etc/mlflow/kubeconfig (the server's own ServiceAccount: the plugins watch namespaces and
# ask Kubernetes about each caller's token). Mounts vanish with the process.
set -euo pipefail
rootfs_file="$1" data="$2" kubeconfig="$3"
shift 3
[[ "${1:-}" == "--" ]] && shift
if [[ -z "${MLFLOW_CHROOT_PRIVATE:-}" ]]; then
  MLFLOW_CHROOT_PRIVATE=1 exec unshare --mount --propagation private -- "$0" "$rootfs_file" "$data" "$kubeconfig" -- "$@"
fi
rootfs="$(cat "$rootfs_file")"
[[ -x "$rootfs/opt/mlflow/bin/mlflow" ]] || { echo "no MLflow server in $rootfs: run sandbox/node/build-images.sh" >&2; exit 1; }
mkdir -p "$rootfs/var/lib/mlflow" "$rootfs/etc/mlflow" "$rootfs/dev" "$rootfs/proc" "$rootfs/tmp"
touch "$rootfs/etc/mlflow/kubeconfig"
mount --bind "$data" "$rootfs/var/lib/mlflow"
mount --bind "$kubeconfig" "$rootfs/etc/mlflow/kubeconfig"
mount --rbind /dev "$rootfs/dev"
mount -t proc proc "$rootfs/proc"
mount -t tmpfs -o mode=1777 tmpfs "$rootfs/tmp"
exec chroot --userspec=10001:10001 "$rootfs" /usr/bin/env -i \
  PATH=/opt/mlflow/bin:/usr/bin:/bin HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
  GIT_PYTHON_REFRESH=quiet KUBECONFIG=/etc/mlflow/kubeconfig \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
  /opt/mlflow/bin/mlflow server "$@"
