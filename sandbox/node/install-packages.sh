#!/usr/bin/env bash
# Install the real node's Debian packages if they are missing: containerd and runc (the
# container runtime), the CNI loopback plugin, buildah and mmdebstrap (the images), skopeo and
# umoci (the workspace server's root filesystem, unpacked from its image), PostgreSQL (the
# embedded server's shared database in the chart tests).
# Needs root (apt-get); a failure stops here with the exact command that failed.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins buildah mmdebstrap skopeo umoci postgresql)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "[node] the real node needs these Debian packages: ${missing[*]}" >&2
  echo "[node] install them as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "[node] installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
for cmd in "apt-get update -qq" "apt-get install -y -qq ${missing[*]}"; do
  if ! $cmd >/tmp/mlflow-operator-apt.log 2>&1; then
    echo "[node] FAILED: $cmd" >&2
    tail -n 20 /tmp/mlflow-operator-apt.log >&2
    exit 1
  fi
done
