"""Play the training container of a TrainingRun whose pod is held on a kwok node.

kwok nodes run no containers. For a pod annotated `sandbox.mlflow.operator.dev/hold: "true"`
this script does what the container would: it takes the pod's own environment (values and
secretKeyRef values, exactly as the operator wired them), expands `$(VAR)` in the container's
args as the kubelet does, runs COMMAND plus those args as a local process, and then finishes
the pod with the process's outcome (annotation `sandbox.mlflow.operator.dev/finish`). A pod
that logs as its ServiceAccount (MLFLOW_TRACKING_AUTH=kubernetes-namespaced) gets a fresh
token of that ServiceAccount in a kubeconfig whose context names the pod's namespace, where
MLflow's client looks when there is no mounted token: the process is judged as the pod is.

    python sandbox/play_training.py NAMESPACE TRAININGRUN -- python examples/churn/train.py
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
FINISH = "sandbox.mlflow.operator.dev/finish"
GROUP, VERSION = "mlflow.operator.dev", "v1alpha1"


def api_client() -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(STATE / "kubeconfig"), client_configuration=configuration)
    return client.ApiClient(configuration)


def wait_for_running_pod(core: client.CoreV1Api, namespace: str, job_name: str, timeout: float) -> client.V1Pod:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        running = [p for p in pods if p.status.phase == "Running" and not (p.metadata.annotations or {}).get(FINISH)]
        if running:
            return running[0]
        time.sleep(0.3)
    raise TimeoutError(f"no running, unfinished pod of Job {job_name} in {namespace} after {timeout}s")


def container_env(core: client.CoreV1Api, namespace: str, container: client.V1Container) -> dict[str, str]:
    """The container's environment as the kubelet would build it (values and secretKeyRefs)."""
    env: dict[str, str] = {}
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = expand(var.value or "", env)
        elif var.value_from.secret_key_ref is not None:
            ref = var.value_from.secret_key_ref
            secret = core.read_namespaced_secret(ref.name, namespace)
            env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
    return env


def service_account_kubeconfig(core: client.CoreV1Api, namespace: str, account: str, directory: Path) -> str:
    """A kubeconfig with a fresh token of the ServiceAccount (TokenRequest) and its namespace."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                  expiration_seconds=3600))
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters: [{name: sandbox, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        f"users: [{{name: {account}, user: {{token: '{token}'}}}}]\n"
        f"contexts: [{{name: pod, context: {{cluster: sandbox, user: {account}, namespace: {namespace}}}}}]\n"
        "current-context: pod\n"
    )
    path.chmod(0o600)
    return str(path)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes a $."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def play(namespace: str, training_run: str, command: list[str], timeout: float = 120) -> int:
    with api_client() as api:
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", training_run)
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            print(f"[play] TrainingRun {namespace}/{training_run} already finished")
            return 0
        pod = wait_for_running_pod(core, namespace, training_run, timeout)
        container = pod.spec.containers[0]
        env = container_env(core, namespace, container)
        args = [expand(a, env) for a in container.args or []]
        print(f"[play] running {' '.join(command + args)} as pod {pod.metadata.name}", flush=True)
        own = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_WORKSPACE", "KUBECONFIG")}
        with tempfile.TemporaryDirectory() as scratch:
            if env.get("MLFLOW_TRACKING_AUTH") == "kubernetes-namespaced":
                env["KUBECONFIG"] = service_account_kubeconfig(
                    core, namespace, pod.spec.service_account_name or "default", Path(scratch))
            code = subprocess.run(command + args, env={**own, **env}, cwd=ROOT).returncode
        outcome = "succeeded" if code == 0 else "failed"
        core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"annotations": {FINISH: outcome}}})
        print(f"[play] exit code {code}: pod {pod.metadata.name} finished {outcome}", flush=True)
        return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("namespace")
    parser.add_argument("training_run")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    return play(args.namespace, args.training_run, command, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
