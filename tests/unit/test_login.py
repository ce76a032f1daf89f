"""In a pod the operator finds the API server the way client-go does, not through cluster DNS."""

from pathlib import Path

from mlflow_operator.gateways.kubernetes import in_cluster_connection


def service_account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("tok3n\n")
    (tmp_path / "ca.crt").write_text("CA")
    (tmp_path / "namespace").write_text("mlflow-operator-system")
    return tmp_path


def test_the_api_server_comes_from_the_service_host_and_port(tmp_path):
    info = in_cluster_connection(service_account(tmp_path),
                                 {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert info is not None
    assert info.server == "https://127.0.0.1:6443"
    assert (info.token, info.scheme, info.default_namespace) == ("tok3n", "Bearer", "mlflow-operator-system")
    assert info.ca_path == str(tmp_path / "ca.crt")


def test_an_ipv6_service_host_is_bracketed(tmp_path):
    info = in_cluster_connection(service_account(tmp_path),
                                 {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert info is not None
    assert info.server == "https://[fd00::1]:443"


def test_outside_a_pod_there_is_no_in_cluster_connection(tmp_path):
    assert in_cluster_connection(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                            "KUBERNETES_SERVICE_PORT": "443"}) is None
    assert in_cluster_connection(service_account(tmp_path), {}) is None
