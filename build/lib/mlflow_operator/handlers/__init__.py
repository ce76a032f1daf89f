"""kopf handlers: thin wiring from Kubernetes events to the reconcile logic of each kind."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, KINDS, VERSION
from mlflow_operator.config import OperatorConfig
from mlflow_operator.gateways.kubernetes import KubernetesGateway
from mlflow_operator.gateways.mlflow import MlflowGateway
from mlflow_operator.handlers import experiment, registeredmodel, trainingrun
from mlflow_operator.reconcilers.common import Services

logger = logging.getLogger("mlflow_operator")


def register_handlers(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register every handler on `registry`; settings such as the drift interval come from config."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount token; elsewhere (the sandbox, a laptop): KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start_services(memo: kopf.Memo, **_: Any) -> None:
        memo["locks"] = {}
        memo["services"] = Services(
            config=config,
            mlflow=MlflowGateway(concurrency=config.mlflow_concurrency),
            kube=KubernetesGateway(concurrency=config.mlflow_concurrency),
        )
        logger.info("watching %s in group %s/%s", ", ".join(KINDS), GROUP, VERSION)

    @kopf.on.cleanup(registry=registry)
    async def stop_services(memo: kopf.Memo, **_: Any) -> None:
        services: Services | None = memo.get("services")
        if services:
            services.mlflow.close()
            services.kube.close()

    experiment.register(registry, config)
    trainingrun.register(registry, config)
    registeredmodel.register(registry, config)
