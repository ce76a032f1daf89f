"""Async steps shared by the reconcilers of every kind."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_operator.api.common import TrackingSpec
from mlflow_operator.config import OperatorConfig
from mlflow_operator.gateways.kubernetes import KubernetesError, KubernetesGateway
from mlflow_operator.gateways.mlflow import MlflowGateway
from mlflow_operator.logic.conditions import ReconcileProblem, progressing
from mlflow_operator.logic.tracking import choose_target, credentials_from_secret
from mlflow_operator.tracking import TrackingTarget


@dataclass(frozen=True)
class Services:
    """What a reconciler may use: configuration and the two gateways."""

    config: OperatorConfig
    mlflow: MlflowGateway
    kube: KubernetesGateway


async def resolve_target(services: Services, namespace: str, tracking: TrackingSpec | None) -> TrackingTarget:
    """The server and credentials for an object; Secrets only from the object's namespace."""
    target, _ = await resolve_target_and_secret(services, namespace, tracking)
    return target


async def resolve_target_and_secret(
    services: Services, namespace: str, tracking: TrackingSpec | None
) -> tuple[TrackingTarget, str | None]:
    """Like resolve_target, and also the name of the Secret the credentials came from."""
    choice = choose_target(tracking, services.config)
    if choice.secret_name:
        try:
            data = await services.kube.read_secret(namespace, choice.secret_name)
        except KubernetesError as error:
            raise ReconcileProblem(progressing(
                "SecretUnreadable", f"cannot read Secret {choice.secret_name!r}: {error.message}"
            )) from None
        credentials = credentials_from_secret(namespace, choice.secret_name, data)
    elif choice.use_operator_credentials:
        credentials = services.config.default_credentials
    else:
        credentials = TrackingTarget(choice.uri).credentials
    ui_url = services.config.ui_url if choice.uri == services.config.default_tracking_uri else None
    return TrackingTarget(uri=choice.uri, credentials=credentials, ui_url=ui_url), choice.secret_name
