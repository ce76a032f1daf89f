"""Where a change or a run came from: the GitOps source an object carries, and the pod, node
and image digest a training run ran with. No I/O."""

from __future__ import annotations

from typing import Any, Mapping

from mlflow_operator.cluster.snapshots import PodSnapshot

# Annotations a GitOps repository fills in at render time (DESIGN: promotion policy and audit).
SOURCE_REPO_ANNOTATION = "mlflow.operator.dev/source-repo"
SOURCE_REVISION_ANNOTATION = "mlflow.operator.dev/source-revision"
ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
# Values from annotations are the tenant's text: bounded before they reach MLflow.
SOURCE_VALUE_MAX_CHARS = 500
RUN_SOURCE_PREFIX = "mlflow.operator.dev/"


def gitops_source(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The Git source an object says it came from: the annotations DESIGN.md names, Argo CD's
    tracking id, Flux's Kustomization labels. Values are bounded, never interpreted."""
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    flux = labels.get(FLUX_NAME_LABEL)
    found = {
        "source-repo": annotations.get(SOURCE_REPO_ANNOTATION),
        "source-revision": annotations.get(SOURCE_REVISION_ANNOTATION),
        "argocd-tracking-id": annotations.get(ARGOCD_TRACKING_ANNOTATION),
        "flux-kustomization": "/".join(filter(None, (labels.get(FLUX_NAMESPACE_LABEL), flux))) if flux else None,
    }
    return {key: str(value)[:SOURCE_VALUE_MAX_CHARS] for key, value in found.items() if value}


def source_run_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The GitOps source as run tags, set when the run is created."""
    return {f"{RUN_SOURCE_PREFIX}{key}": value for key, value in gitops_source(metadata).items()}


def pod_run_tags(pods: list[PodSnapshot], container: str | None) -> dict[str, str]:
    """What the run ran on, from the Job's last pod: its name, its node, and the training
    container's image and the digest the node resolved it to (from the pod's status)."""
    if not pods:
        return {}
    pod = max(pods, key=lambda p: (p.created or "", p.name))
    tags = {"k8s.pod": pod.name}
    if pod.node:
        tags["k8s.node"] = pod.node
    # k8s.image (the image the template names) is set when the run is created.
    image = next((c for c in pod.containers if c.name == container), pod.containers[0] if pod.containers else None)
    digest = image_digest(image.image_id) if image is not None else None
    if digest:
        tags["k8s.image.digest"] = digest
    return tags


def image_digest(image_id: str | None) -> str | None:
    """`sha256:...` from a container status's imageID (`repo@sha256:...`,
    `docker-pullable://repo@sha256:...`, or the bare id)."""
    if not image_id:
        return None
    digest = image_id.rsplit("@", 1)[-1]
    return digest if digest.startswith("sha256:") else None
