#!/usr/bin/env bash
# Start the kubelet inside containerd's mount namespace (see node-namespace.sh), so that
# both see the same private /run, /var/lib and /var/log and the same container mounts.
#   sandbox/node/kubelet.sh CONTAINERD_PID_FILE KUBELET ARGS...
set -euo pipefail
pid="$(cat "$1")"; shift
exec nsenter --mount="/proc/$pid/ns/mnt" -- "$@"
