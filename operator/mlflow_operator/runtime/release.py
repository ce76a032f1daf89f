"""`mlflow-operator release-finalizers`: what the chart's uninstall hook runs.

After `helm uninstall` the CRDs and the objects stay, but no operator is left to remove its
finalizers: deleting such an object would hang. Once the operator's pods are gone (an operator
still running would put its finalizer back), this takes the operator's finalizer off every
object it handles and the Job-outcome finalizer off their training Jobs. MLflow is not
touched: the entities stay, as with deletionPolicy Retain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mlflow_operator.api.common import OPERATOR_FINALIZER, PLURALS
from mlflow_operator.api.trainingrun import LABEL_TRAINING_RUN
from mlflow_operator.gateways.kubernetes import KubernetesGateway
from mlflow_operator.logic.trainingrun import JOB_FINALIZER

logger = logging.getLogger("mlflow_operator.runtime.release")


class OperatorStillRunning(Exception):
    """The operator's pods did not stop in time: releasing now would race with them."""


@dataclass(frozen=True)
class Released:
    objects: int
    jobs: int


async def wait_for_operator_pods_gone(kube: KubernetesGateway, namespace: str, selector: str,
                                      wait_seconds: float, poll: float = 2.0) -> None:
    deadline = time.monotonic() + wait_seconds
    while pods := await kube.list_pods(namespace, selector):
        if time.monotonic() > deadline:
            names = ", ".join(sorted(p.name for p in pods))
            raise OperatorStillRunning(f"operator pods still present after {wait_seconds:.0f}s: {names}")
        await asyncio.sleep(poll)


async def release_finalizers(kube: KubernetesGateway, namespaces: list[str] | None) -> Released:
    """Remove the operator's finalizers in `namespaces` (None: every namespace)."""
    objects = jobs = 0
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    for namespace in scopes:
        for plural in PLURALS:
            for obj in await kube.list_objects_everywhere(plural, namespace):
                metadata = obj["metadata"]
                if OPERATOR_FINALIZER in (metadata.get("finalizers") or []):
                    await kube.remove_object_finalizer(plural, metadata["namespace"], metadata["name"],
                                                       OPERATOR_FINALIZER)
                    objects += 1
        for job in await kube.list_jobs(namespace, LABEL_TRAINING_RUN):
            if JOB_FINALIZER in job.finalizers:
                await kube.remove_job_finalizer(job.namespace, job.name, JOB_FINALIZER)
                jobs += 1
    return Released(objects=objects, jobs=jobs)


async def run_release(namespaces: list[str] | None, operator_namespace: str | None, operator_selector: str | None,
                      wait_seconds: float) -> Released:
    kube = KubernetesGateway()
    try:
        if operator_namespace and operator_selector:
            logger.info("waiting for the operator's pods (%s) to stop", operator_selector)
            await wait_for_operator_pods_gone(kube, operator_namespace, operator_selector, wait_seconds)
        released = await release_finalizers(kube, namespaces)
        logger.info("released %d objects and %d training Jobs", released.objects, released.jobs)
        return released
    finally:
        kube.close()
