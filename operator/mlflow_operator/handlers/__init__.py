"""kopf handlers: thin wiring from Kubernetes events to the reconcile logic of each kind."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, KINDS, VERSION
from mlflow_operator.config import OperatorConfig

logger = logging.getLogger("mlflow_operator")


def register_handlers(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register every handler on `registry`; settings such as the drift interval come from config."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount token; elsewhere (the sandbox, a laptop): KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def announce(**_: Any) -> None:
        logger.info("watching %s in group %s/%s", ", ".join(KINDS), GROUP, VERSION)
