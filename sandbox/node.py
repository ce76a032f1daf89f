"""The sandbox's real node: containerd and a kubelet, so that training containers truly run.

Everything stays on this machine and inside the sandbox's own state:
- containerd runs in a private mount namespace (node/node-namespace.sh) with /run, /var/lib
  and /var/log of its own, and the kubelet joins it; the host's kernel settings are never
  written (protectKernelDefaults, with the values the kubelet checks bound read-only);
- pods use the host network and reach MLflow and the API server on 127.0.0.1; the only CNI
  configuration is the loopback plugin; pods resolve names with a resolv.conf that points
  at 127.0.0.1, so nothing is sent beyond the loopback interface;
- the kubelet's cgroups live below the cgroup the sandbox itself runs in, so containers stay
  inside the limits of the process that started them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

NODE_NAME = "localhost"
# Pods of namespaces with this label run on the real node (a MutatingAdmissionPolicy adds the
# host network, the toleration and the node selection); the operator knows nothing of it.
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"
TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
CGROUP_CONTROLLERS = Path("/sys/fs/cgroup")

# A host-network pod's IP is the node's address, which is this machine's own interface, not
# loopback: HTTP probes of the first 8 containers are sent to 127.0.0.1 instead.
PROBE_HOSTS = " +\n".join(
    f"""        [0, 1, 2, 3, 4, 5, 6, 7].filter(i, i < size(object.spec.containers) &&
            has(object.spec.containers[i].{probe}) && has(object.spec.containers[i].{probe}.httpGet))
          .map(i, JSONPatch{{op: "add", path: "/spec/containers/" + string(i) + "/{probe}/httpGet/host",
                             value: "127.0.0.1"}})"""
    for probe in ("livenessProbe", "readinessProbe", "startupProbe")
)
def real_node_pod_policy(name: str, body: str) -> str:
    """A MutatingAdmissionPolicy (and its binding) on pods created in real-node namespaces;
    `body` is the rest of its spec (conditions, variables, mutations)."""
    return f"""apiVersion: admissionregistration.k8s.io/v1beta1
kind: MutatingAdmissionPolicy
metadata:
  name: {name}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    namespaceSelector:
      matchLabels: {{"{REAL_NODE_LABEL}": "true"}}
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
{body}---
apiVersion: admissionregistration.k8s.io/v1beta1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: {name}
spec:
  policyName: {name}
"""


# The ranks of a distributed run find rank 0 at MASTER_ADDR:MASTER_PORT. On a real cluster
# that is rank 0's name in the run's headless Service; here every pod shares the host's
# network and there is no cluster DNS, so the sandbox (not the operator) rewrites the
# rendezvous of the pods it runs: the address becomes 127.0.0.1, and the port one derived
# from the Job's uid (its first four hex digits, into 20000-31999, below the ephemeral ports),
# so that concurrent runs on this one host do not share a port. Ranks of one Job get the same.
RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORT_RANGE = 20000, 12000
_HEX = '"0123456789abcdef"'
_UID = "object.metadata.labels['batch.kubernetes.io/controller-uid']"
RENDEZVOUS_PORT = (f"{RENDEZVOUS_PORT_BASE} + (" + " + ".join(
    f"{_HEX}.indexOf({_UID}.charAt({i})) * {16 ** (3 - i)}" for i in range(4)) + f") % {RENDEZVOUS_PORT_RANGE}")
RENDEZVOUS_ENV = "[" + ", ".join(
    f'Object.spec.containers.env{{name: "{name}", value: {value}}}'
    for name, value in (("MASTER_ADDR", '"127.0.0.1"'), ("PET_MASTER_ADDR", '"127.0.0.1"'),
                        ("MASTER_PORT", "string(variables.port)"), ("PET_MASTER_PORT", "string(variables.port)"))
) + "]"
RANK_CONTAINER = "has(c.env) && c.env.exists(e, e.name == 'MASTER_ADDR')"
RENDEZVOUS_POLICY = "---\n" + real_node_pod_policy("sandbox-rendezvous", f"""  matchConditions:
  - name: rank-of-an-indexed-job
    expression: >-
      has(object.metadata.labels) && 'batch.kubernetes.io/controller-uid' in object.metadata.labels &&
      has(object.metadata.annotations) && 'batch.kubernetes.io/job-completion-index' in object.metadata.annotations &&
      object.spec.containers.exists(c, {RANK_CONTAINER})
  variables:
  - name: port
    expression: >-
      {RENDEZVOUS_PORT}
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: >-
        Object{{spec: Object.spec{{containers: object.spec.containers.filter(c, {RANK_CONTAINER})
          .map(c, Object.spec.containers{{name: c.name, env: {RENDEZVOUS_ENV}}})}}}}
""")
TOLERATION = f'Object.spec.tolerations{{key: "{REAL_NODE_LABEL}", operator: "Exists", effect: "NoSchedule"}}'
REAL_NODE_POLICY = real_node_pod_policy("sandbox-real-node", f"""  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >-
        [JSONPatch{{op: "add", path: "/spec/hostNetwork", value: true}}] +
        (has(object.spec.nodeSelector)
          ? [JSONPatch{{op: "add", path: "/spec/nodeSelector/" + jsonpatch.escapeKey("{REAL_NODE_LABEL}"), value: "true"}}]
          : [JSONPatch{{op: "add", path: "/spec/nodeSelector", value: {{"{REAL_NODE_LABEL}": "true"}}}}]) +
        (has(object.spec.tolerations)
          ? [JSONPatch{{op: "add", path: "/spec/tolerations/-", value: {TOLERATION}}}]
          : [JSONPatch{{op: "add", path: "/spec/tolerations", value: [{TOLERATION}]}}]) +
{PROBE_HOSTS}
""") + RENDEZVOUS_POLICY


# Replicas of the chart's MLflow server on the one real node all bind the same port of the
# host network: the sandbox (not the chart) makes them share it. Only servers on a shared
# store (the database URI from a Secret) can have replicas; sqlite servers are left alone. Its policy mounts
# shared-port/sitecustomize.py, which binds with SO_REUSEPORT (the kernel spreads connections
# over the listening replicas, as a Service would over pod IPs), drops the container's ports
# (with the host network each would be a host port, and the scheduler puts no two pods with
# one host port on a node) and gives the probes the port's number instead of its name.
SHARED_PORT_DIR = Path(__file__).resolve().parent / "node" / "shared-port"
SHARED_PORT_ENV = ", ".join(
    f'Object.spec.containers.env{{name: "{name}", value: "{value}"}}'
    for name, value in (("PYTHONPATH", "/sandbox-shared-port"), ("SANDBOX_SHARED_PORT", "1")))
_PORT = "object.spec.containers[0].ports[0].containerPort"
# Liveness: any replica's answer will do. Startup and readiness: this pod's own socket.
SHARED_PORT_PROBES = f"""        (has(object.spec.containers[0].livenessProbe) && has(object.spec.containers[0].livenessProbe.httpGet)
          ? [JSONPatch{{op: "replace", path: "/spec/containers/0/livenessProbe/httpGet/port", value: {_PORT}}}]
          : []) +
""" + " +\n".join(
    f"""        (has(object.spec.containers[0].{probe})
          ? [JSONPatch{{op: "replace", path: "/spec/containers/0/{probe}", value: Object.spec.containers.{probe}{{
               exec: Object.spec.containers.{probe}.exec{{
                 command: ["python3", "/sandbox-shared-port/listening.py", string({_PORT})]}},
               initialDelaySeconds: {delay}, periodSeconds: 2, timeoutSeconds: 5, failureThreshold: {failures}}}}}]
          : [])"""
    for probe, delay, failures in (("startupProbe", 5, 150), ("readinessProbe", 0, 3))
)
SHARED_PORT_POLICY = real_node_pod_policy("sandbox-shared-port", f"""  matchConditions:
  - name: the-charts-mlflow-server
    expression: >-
      has(object.metadata.labels) && object.metadata.labels.exists(k, k == 'app.kubernetes.io/component') &&
      object.metadata.labels['app.kubernetes.io/component'] == 'mlflow' &&
      has(object.spec.containers[0].ports) && size(object.spec.containers[0].ports) > 0 &&
      has(object.spec.containers[0].env) && object.spec.containers[0].env.exists(e,
        e.name == 'MLFLOW_BACKEND_STORE_URI' && has(e.valueFrom))
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >-
{SHARED_PORT_PROBES} +
        [JSONPatch{{op: "remove", path: "/spec/containers/0/ports"}},
         JSONPatch{{op: "add", path: "/spec/volumes/-", value: Object.spec.volumes{{name: "sandbox-shared-port",
           hostPath: Object.spec.volumes.hostPath{{path: "{SHARED_PORT_DIR}", type: "Directory"}}}}}},
         JSONPatch{{op: "add", path: "/spec/containers/0/volumeMounts/-", value: Object.spec.containers.volumeMounts{{
           name: "sandbox-shared-port", mountPath: "/sandbox-shared-port", readOnly: true}}}}] +
        [{SHARED_PORT_ENV}].map(e, JSONPatch{{op: "add", path: "/spec/containers/0/env/-", value: e}})
""")


def own_cgroup() -> str:
    """The cgroup this process runs in (cgroup v1: the memory controller's path)."""
    fallback = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
        if controllers == "":
            fallback = path
    return fallback


def v1_hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (one directory per controller, as on these machines)."""
    if not CGROUP_CONTROLLERS.is_dir():
        return []
    return sorted(p for p in CGROUP_CONTROLLERS.iterdir()
                  if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists())


def prepare_cgroup_root(root: str, record: Path) -> None:
    """Create the kubelet's cgroup root in every hierarchy (the kubelet refuses a root that
    does not exist); a new cpuset gets its parent's CPUs and memory nodes. Every directory
    created is listed in `record`, so that stopping the node removes exactly those."""
    created: list[str] = []
    for hierarchy in v1_hierarchies():
        path = hierarchy
        for part in [p for p in root.split("/") if p]:
            parent, path = path, path / part
            if not path.exists():
                path.mkdir()
                created.append(str(path))
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if (path / knob).exists() and not (path / knob).read_text().strip():
                        (path / knob).write_text((parent / knob).read_text())
    record.write_text("".join(f"{path}\n" for path in created))


def _dirs_below(directory: Path) -> list[Path]:
    """Every directory below `directory`. os.walk, not Path.rglob: cgroups of pods that end
    meanwhile vanish during the walk, which rglob raises on and os.walk skips."""
    return [Path(parent) / name for parent, names, _ in os.walk(directory) for name in names]


def _pids_below(directory: Path) -> list[int]:
    pids: list[int] = []
    for cgroup in [directory, *_dirs_below(directory)]:
        try:
            pids += [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            continue
    return pids


def remove_cgroup_root(root: str, record: Path) -> None:
    """Kill whatever still runs below the kubelet's cgroup root and remove its cgroups, and
    the directories above it that prepare_cgroup_root created."""
    tops = [h / root.lstrip("/") for h in v1_hierarchies()]
    for _ in range(50):
        pids = {pid for top in tops if top.exists() for pid in _pids_below(top)}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for top in tops:
        if top.exists():
            _remove_empty_dirs([*_dirs_below(top), top])
    if record.exists():
        _remove_empty_dirs([Path(line) for line in record.read_text().split()])
        record.unlink()


def _remove_empty_dirs(directories: list[Path]) -> None:
    """Deepest first; a directory that is not empty (or gone) stays as it is."""
    for directory in sorted(directories, key=lambda d: -len(d.parts)):
        with contextlib.suppress(OSError):
            directory.rmdir()


def stop_shims(socket: Path) -> int:
    """containerd's shims outlive containerd: stop the ones of this sandbox's containerd."""
    stopped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                stopped += 1
            except ProcessLookupError:
                pass
    return stopped


def containerd_config(node_dir: Path, socket: Path) -> str:
    return f"""version = 2
root = "{node_dir / 'containerd' / 'root'}"
state = "{node_dir / 'containerd' / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node_dir / 'containerd' / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/sandbox/pause:1"
  # This VM lacks CAP_SYS_RESOURCE: without it every pod sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node_dir / 'cni'}"
"""


# Only host-network pods run here; the runtime still wants one network configuration.
CNI_LOOPBACK = """{
  "cniVersion": "0.4.0",
  "name": "sandbox-loopback",
  "plugins": [{"type": "loopback"}]
}
"""


def kubelet_config(node_dir: Path, pki_dir: Path, socket: Path, port: int, healthz_port: int,
                   cgroup_root: str) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
tlsCertFile: {pki_dir / 'kubelet-serving.crt'}
tlsPrivateKeyFile: {pki_dir / 'kubelet-serving.key'}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki_dir / 'ca.crt'}}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
protectKernelDefaults: true
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
resolvConf: {node_dir / 'resolv.conf'}
registerWithTaints:
- {{key: {TAINT['key']}, value: "{TAINT['value']}", effect: {TAINT['effect']}}}
serializeImagePulls: false
maxPods: 30
staticPodPath: ""
"""


def import_images(ctr: list[str], archives: list[str]) -> None:
    """Import the image archives into containerd's Kubernetes namespace (skips known ones)."""
    known = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout
    for archive in archives:
        marker = Path(archive).with_suffix(".imported")
        if marker.exists() and marker.read_text() in known and marker.read_text():
            continue
        result = subprocess.run([*ctr, "images", "import", "--snapshotter", "overlayfs", archive],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} failed:\n{result.stderr}")
        names = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("unpacking ")]
        marker.write_text(names[0] if names else "")
