"""Prometheus metrics: one place, so every gateway and handler reports the same names.

API calls are labelled with the kind whose reconcile made them (from a context variable
the handlers set), so a benchmark or a dashboard can read the cost of each kind."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

from prometheus_client import Counter, Histogram, start_http_server

# The kind being reconciled by the current task ("" outside a reconcile: start-up, cleanup).
RECONCILING_KIND: ContextVar[str] = ContextVar("reconciling_kind", default="")


@contextlib.contextmanager
def reconciling(kind: str) -> Iterator[None]:
    token = RECONCILING_KIND.set(kind)
    try:
        yield
    finally:
        RECONCILING_KIND.reset(token)


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
    "Latency of MLflow API calls made by the operator, by the kind reconciled, operation and outcome.",
    ["kind", "operation", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KUBERNETES_REQUESTS = Histogram(
    "mlflow_operator_kubernetes_request_duration_seconds",
    "Latency of Kubernetes API calls made by the operator's gateway, by the kind reconciled, "
    "operation and outcome.",
    ["kind", "operation", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DRIFT_PASS_DURATION = Histogram(
    "mlflow_operator_drift_pass_duration_seconds",
    "Time one drift pass over every object of a kind took, reconciles of drifted objects included.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
DRIFT_PASSES = Counter(
    "mlflow_operator_drift_passes_total",
    "Drift passes due, by kind and whether this replica ran them or stood by for a peer.",
    ["kind", "outcome"],
)
DRIFTED = Counter(
    "mlflow_operator_drifted_objects_total",
    "Objects a drift pass found different from MLflow (or not comparable) and reconciled, by kind.",
    ["kind"],
)
MODEL_VERSIONS_READ = Counter(
    "mlflow_operator_model_versions_read_total",
    "Model versions MLflow's version searches returned to the operator, by the kind reconciled "
    "(what a drift pass reads grows with what changed, not with every version).",
    ["kind"],
)
EVENTS = Counter(
    "mlflow_operator_events_total",
    "Kubernetes Events posted by the operator, by kind and type (Normal, Warning).",
    ["kind", "type"],
)


def serve(port: int, address: str) -> None:
    """Start the /metrics endpoint in a daemon thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=address)
