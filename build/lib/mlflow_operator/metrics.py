"""Prometheus metrics: one place, so every gateway and handler reports the same names."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "mlflow_operator_reconciles_total",
    "Reconciles run, by kind and outcome (success, retry, error).",
    ["kind", "outcome"],
)
RECONCILE_DURATION = Histogram(
    "mlflow_operator_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MLFLOW_REQUESTS = Histogram(
    "mlflow_operator_mlflow_request_duration_seconds",
    "Latency of MLflow API calls made by the operator, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KUBERNETES_REQUESTS = Histogram(
    "mlflow_operator_kubernetes_request_duration_seconds",
    "Latency of Kubernetes API calls made by the operator's gateway, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def serve(port: int, address: str) -> None:
    """Start the /metrics endpoint in a daemon thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=address)
