"""kopf handlers: thin wiring from Kubernetes events to the reconcile logic of each kind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, KINDS, VERSION
from mlflow_operator.caches import Caches
from mlflow_operator.caches.pages import ExperimentPages, ModelPages
from mlflow_operator.caches.watches import Watched
from mlflow_operator.gateways.kubernetes import (
    CREDENTIALS_LABEL,
    KubernetesGateway,
    credentials_data,
    in_cluster_connection,
)
from mlflow_operator.gateways.mlflow import HttpSettings, MlflowGateway
from mlflow_operator.handlers import experiment, registeredmodel, trainingrun, trainingsweep
from mlflow_operator.handlers.drift import KOPF_SETTINGS
from mlflow_operator.handlers.objects import services_of
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime import heartbeat, memory
from mlflow_operator.runtime.config import OperatorConfig

# A model's versions are read in full at least every 10 to 20 drift intervals, even when
# nothing shows a change (watched.ModelPages).
FULL_READ_INTERVALS = 10

logger = logging.getLogger("mlflow_operator")


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
            mlflow=MlflowGateway(concurrency=config.mlflow_concurrency, settings=HttpSettings(
                timeout=config.mlflow_timeout, max_retries=config.mlflow_max_retries)),
            kube=KubernetesGateway(concurrency=config.kubernetes_concurrency),
            caches=Caches(
                # Filled by the watch event handlers below and in each kind's module.
                watched=Watched.filled_by_watches(credentials=config.watch_credentials),
                # Searched afresh by each drift pass (one per interval), shared by the checks in it.
                experiment_pages=ExperimentPages(max_age_seconds=config.drift_interval / 2),
                model_pages=ModelPages(max_age_seconds=config.drift_interval / 2,
                                       full_read_seconds=config.drift_interval * FULL_READ_INTERVALS),
            ),
        )
        memo["background"]["memory"] = asyncio.create_task(memory.release_freed_memory_forever())
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

    experiment.register(registry, config,
                        wake_when_ready=(trainingrun.wake_training_runs, trainingsweep.wake_training_sweeps))
    trainingrun.register(registry, config)
    registeredmodel.register(registry, config)
    trainingsweep.register(registry, config)
    if config.watch_credentials:
        # The API server sends only the labelled Secrets (runtime/process.py sets the selector).
        @kopf.on.event("", "v1", "secrets", id="credentials", labels={CREDENTIALS_LABEL: "true"}, registry=registry)
        async def credentials_secret_seen(body: kopf.Body, memo: kopf.Memo, type: str | None = None,
                                          **_: Any) -> None:
            """A labelled Secret's credentials as the watch last saw them: a reconcile or drift
            check of an object that names it reads no Secret."""
            metadata = body["metadata"]
            consented = (metadata.get("labels") or {}).get(CREDENTIALS_LABEL) == "true"
            services_of(memo).caches.watched.saw_credentials(
                (metadata["namespace"], metadata["name"]),
                None if type == "DELETED" or not consented else credentials_data(body.get("data")))
