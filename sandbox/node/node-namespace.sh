#!/usr/bin/env bash
# Run a command (containerd) in the real node's own mount namespace. Inside it, /run,
# /var/lib and /var/log are directories under the sandbox's state, and the three kernel
# settings the kubelet checks read as it expects, read-only. The kubelet joins this
# namespace (nsenter), so neither it nor containerd ever writes the host's /run, /var or
# kernel settings, and every mount they make (overlays, volumes) stays in here.
#
#   unshare --mount --propagation private -- sandbox/node/node-namespace.sh NODE_DIR COMMAND...
set -euo pipefail
node="$1"; shift
mkdir -p "$node/run" "$node/var-lib" "$node/var-log" "$node/sysctl"
mount -t tmpfs -o mode=0755 sandbox-node-run "$node/run"
mount --bind "$node/run" /run
mount --bind "$node/var-lib" /var/lib
mount --bind "$node/var-log" /var/log
# The values the kubelet wants (it refuses to start otherwise with protectKernelDefaults).
for setting in vm/overcommit_memory=1 kernel/panic=10 kernel/panic_on_oops=1; do
  path="/proc/sys/${setting%%=*}"
  file="$node/sysctl/${setting%%=*}"; mkdir -p "$(dirname "$file")"
  printf '%s\n' "${setting#*=}" > "$file"
  mount --bind "$file" "$path"
  mount -o remount,bind,ro "$path"
done
exec "$@"
