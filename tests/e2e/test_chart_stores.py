"""The embedded server's stores as the chart renders them: sqlite on the PVC (one server,
replaced) or a shared database and object store (replicas, rolled), what the values schema
refuses, and where the store's secrets go (the Secret's name only, never a value)."""

from __future__ import annotations

import yaml
from test_chart import CHART, helm, render

SHARED = (
    "mlflow.backendStore.type=external",
    "mlflow.backendStore.uriFrom.secretKeyRef.name=mlflow-db",
    "mlflow.artifacts.type=s3",
    "mlflow.artifacts.s3.bucket=team-mlflow",
    "mlflow.artifacts.s3.prefix=artifacts",
    "mlflow.artifacts.s3.endpointUrl=https://s3.example.com",
    "mlflow.artifacts.s3.credentialsSecret.name=mlflow-s3",
)


def objects(manifest: str) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(manifest) if doc}


def server(rendered: dict[tuple[str, str], dict]) -> dict:
    return rendered[("Deployment", "r-mlflow-operator-mlflow")]


def refusal(sandbox, *sets: str) -> str:
    args = ["template", "r", str(CHART), "--kube-version", "1.34.0"]
    for item in sets:
        args += ["--set", item]
    result = helm(sandbox, *args, check=False)
    assert result.returncode != 0, "the values schema accepted it"
    return result.stderr


def test_sqlite_is_one_server_replaced_not_rolled_and_migrated_by_its_init_container(sandbox):
    rendered = objects(render(sandbox, "r", "ns"))
    deployment = server(rendered)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [migrate] = deployment["spec"]["template"]["spec"]["initContainers"]
    assert migrate["args"] == ["db", "upgrade", "{uri}"]
    assert ("PersistentVolumeClaim", "r-mlflow-operator-mlflow") in rendered
    assert ("Job", "r-mlflow-operator-mlflow-migrate") not in rendered
    assert not any(kind == "PodDisruptionBudget" for kind, _ in rendered)


def test_more_than_one_replica_or_worker_on_sqlite_is_refused_by_the_values_schema(sandbox):
    for sets in (("mlflow.replicas=2",), ("mlflow.workers=2",)):
        assert "/mlflow/backendStore/type': value must be 'external'" in refusal(sandbox, *sets)


def test_replicas_need_artifacts_in_an_object_store_or_a_shared_volume(sandbox):
    message = refusal(sandbox, "mlflow.replicas=2", "mlflow.backendStore.type=external",
                      "mlflow.backendStore.uriFrom.secretKeyRef.name=db")
    assert "/mlflow/artifacts/type': value must be 's3'" in message
    assert "ReadWriteMany" in message
    rendered = objects(render(sandbox, "r", "ns", "mlflow.replicas=2", "mlflow.backendStore.type=external",
                              "mlflow.backendStore.uriFrom.secretKeyRef.name=db",
                              "mlflow.persistence.accessModes={ReadWriteMany}"))
    assert server(rendered)["spec"]["replicas"] == 2


def test_an_external_store_needs_its_secret_and_an_object_store_its_bucket(sandbox):
    assert "/mlflow/backendStore/uriFrom/secretKeyRef/name" in refusal(sandbox, "mlflow.backendStore.type=external")
    assert "/mlflow/artifacts/s3/bucket" in refusal(sandbox, "mlflow.artifacts.type=s3")


def test_shared_stores_roll_replicas_one_at_a_time_with_a_disruption_budget(sandbox):
    rendered = objects(render(sandbox, "r", "ns", *SHARED, "mlflow.replicas=3", "mlflow.workers=4"))
    deployment = server(rendered)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--workers=4" in container["args"]
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert "initContainers" not in deployment["spec"]["template"]["spec"]
    budget = rendered[("PodDisruptionBudget", "r-mlflow-operator-mlflow")]
    assert budget["spec"]["maxUnavailable"] == 1
    # No volume: the database and the bucket hold everything.
    assert ("PersistentVolumeClaim", "r-mlflow-operator-mlflow") not in rendered
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_the_database_uri_and_object_store_keys_come_from_secrets_never_the_spec(sandbox):
    rendered = objects(render(sandbox, "r", "ns", *SHARED))
    [container] = server(rendered)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"] == {"secretKeyRef": {"name": "mlflow-db", "key": "uri"}}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.example.com"
    assert "--artifacts-destination=s3://team-mlflow/artifacts" in container["args"]
    assert "--serve-artifacts" in container["args"]
    assert not any(arg.startswith("--backend-store-uri") for arg in container["args"])


def test_a_shared_database_is_migrated_once_by_a_pre_install_and_pre_upgrade_hook(sandbox):
    rendered = objects(render(sandbox, "r", "ns", *SHARED))
    job = rendered[("Job", "r-mlflow-operator-mlflow-migrate")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    [container] = job["spec"]["template"]["spec"]["containers"]
    # The URI is read from the environment inside the process: in no command line.
    assert container["command"][:2] == ["python3", "-c"]
    assert container["args"] == ["db", "upgrade", "{uri}"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_a_service_monitor_is_rendered_when_the_prometheus_operator_crds_exist(sandbox):
    with_crds = ["template", "r", str(CHART), "--kube-version", "1.34.0",
                 "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "mlflow.metrics.enabled=true"]
    rendered = objects(helm(sandbox, *with_crds).stdout)
    monitor = rendered[("ServiceMonitor", "r-mlflow-operator-mlflow")]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    [container] = server(rendered)["spec"]["template"]["spec"]["containers"]
    assert "--expose-prometheus=/tmp/prometheus" in container["args"]
    without_crds = objects(render(sandbox, "r", "ns", "mlflow.metrics.enabled=true"))
    assert not any(kind == "ServiceMonitor" for kind, _ in without_crds)
    forced = objects(render(sandbox, "r", "ns", "mlflow.metrics.enabled=true",
                            "mlflow.metrics.serviceMonitor.enabled=true"))
    assert ("ServiceMonitor", "r-mlflow-operator-mlflow") in forced
