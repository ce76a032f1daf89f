"""kopf handlers: thin wiring from Kubernetes events to the reconcile logic of each kind."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import kopf

from mlflow_operator import heartbeat
from mlflow_operator.api.common import GROUP, KINDS, VERSION
from mlflow_operator.config import OperatorConfig
from mlflow_operator.gateways.kubernetes import CREDENTIALS_LABEL, KubernetesGateway, credentials_data
from mlflow_operator.gateways.mlflow import MlflowGateway
from mlflow_operator.handlers import experiment, registeredmodel, trainingrun, trainingsweep
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.handlers.common import services_of
from mlflow_operator.handlers.drift import KOPF_SETTINGS
from mlflow_operator.watched import ExperimentPages, ModelPages, Watched

logger = logging.getLogger("mlflow_operator")


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_connection(account_dir: Path = SERVICE_ACCOUNT_DIR,
                          environ: Mapping[str, str] = os.environ) -> kopf.ConnectionInfo | None:
    """The API server as a pod finds it: KUBERNETES_SERVICE_HOST and _PORT, as client-go and
    the Kubernetes client do (kopf's own service-account login always names
    kubernetes.default.svc, which needs cluster DNS), with the ServiceAccount's token and CA.
    Read on every login, so a rotated token is picked up."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = account_dir / "token"
    if not (host and port and token.exists()):
        return None
    namespace = account_dir / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(account_dir / "ca.crt"),
        scheme="Bearer",
        token=token.read_text().strip(),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def register_handlers(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register every handler on `registry`; settings such as the drift interval come from config."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount token; elsewhere (the sandbox, a laptop): KUBECONFIG.
        return in_cluster_connection() or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start_services(memo: kopf.Memo, settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        memo["objects"] = {}
        memo[KOPF_SETTINGS] = settings
        # Tasks of the operator's own (the drift passes), stopped at cleanup.
        memo["background"] = {}
        memo["services"] = Services(
            config=config,
            mlflow=MlflowGateway(concurrency=config.mlflow_concurrency),
            kube=KubernetesGateway(concurrency=config.kubernetes_concurrency),
            # Filled by the watch event handlers below and in each kind's module.
            watched=Watched.filled_by_watches(credentials=config.watch_credentials),
            # Searched afresh by each drift pass (one per interval), shared by the checks in it.
            experiment_pages=ExperimentPages(max_age_seconds=config.drift_interval / 2),
            model_pages=ModelPages(max_age_seconds=config.drift_interval / 2),
        )
        if config.heartbeat_file:
            memo["heartbeat"] = asyncio.create_task(heartbeat.beat_forever(Path(config.heartbeat_file)))
        logger.info("watching %s in group %s/%s", ", ".join(KINDS), GROUP, VERSION)

    @kopf.on.cleanup(registry=registry)
    async def stop_services(memo: kopf.Memo, **_: Any) -> None:
        beating: asyncio.Task[None] | None = memo.get("heartbeat")
        if beating:
            beating.cancel()
        for task in (memo.get("background") or {}).values():
            task.cancel()
        services: Services | None = memo.get("services")
        if services:
            services.mlflow.close()
            services.kube.close()

    experiment.register(registry, config)
    trainingrun.register(registry, config)
    registeredmodel.register(registry, config)
    trainingsweep.register(registry, config)
    if config.watch_credentials:
        # The API server sends only the labelled Secrets (runtime.py sets the selector).
        @kopf.on.event("", "v1", "secrets", id="credentials", labels={CREDENTIALS_LABEL: "true"}, registry=registry)
        async def credentials_secret_seen(body: kopf.Body, memo: kopf.Memo, type: str | None = None,
                                          **_: Any) -> None:
            """A labelled Secret's credentials as the watch last saw them: a reconcile or drift
            check of an object that names it reads no Secret."""
            cache = services_of(memo).watched.credentials
            assert cache is not None
            metadata = body["metadata"]
            cache.put((metadata["namespace"], metadata["name"]),
                      None if type == "DELETED" else credentials_data(body.get("data")))
