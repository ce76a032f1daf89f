"""Process-level wiring: environment, logging, kopf settings, metrics, and the run loop."""

from __future__ import annotations

import logging
import os
import zlib

import kopf

from mlflow_operator import __version__
from mlflow_operator.api.common import GROUP, KINDS, OPERATOR_FINALIZER, VERSION
from mlflow_operator.api.trainingrun import LABEL_TRAINING_RUN
from mlflow_operator.gateways.kubernetes import CREDENTIALS_LABEL
from mlflow_operator.handlers import register_handlers
from mlflow_operator.handlers.drift import PEER_IDENTITY
from mlflow_operator.handlers.objects import HANDLED
from mlflow_operator.runtime import kopf_adapter, metrics
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.runtime.kopf_adapter import HandledGenerationDiffBase, HandledGenerations, ProgressStorage

logger = logging.getLogger("mlflow_operator")

# Seconds between kopf's checks that a stopped timer has exited (see build_settings).
TIMER_EXIT_POLL_SECONDS = 1.0
# Objects kopf works on at once, per resource kind (see build_settings).
QUEUE_WORKERS = 100
# Objects per page of the listing each watch starts with (see build_settings).
LIST_CHUNK = 500
# Seconds kopf holds an object's worker for its last patch to come back (see build_settings).
CONSISTENCY_SECONDS = 1.0

# Annotation prefix for kopf's own bookkeeping, so it never clutters `.status`.
BOOKKEEPING_PREFIX = GROUP
FINALIZER = OPERATOR_FINALIZER


def configure_environment(config: OperatorConfig) -> None:
    """Drop the MLflow credentials the operator may have been started with, so that no part of
    the process (nor a library reading the environment) sends them to a tenant's server: each
    request carries only the credentials of its own target."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        os.environ.pop(name, None)


def configure_logging(config: OperatorConfig) -> None:
    log_format = kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=config.verbose, log_format=log_format, log_prefix=True)
    if not config.verbose:
        kopf_adapter.quiet_routine_successes()
    # The HTTP libraries log request lines (with URLs) at DEBUG; keep them out even in -v.
    for noisy in ("urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_settings(config: OperatorConfig, handled: HandledGenerations) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = ProgressStorage(prefix=BOOKKEEPING_PREFIX)
    # What was handled is status.observedGeneration and the handlers' memory, not a copy of
    # the object written to an annotation after every change (decision 0019).
    settings.persistence.diffbase_storage = HandledGenerationDiffBase(handled)
    # Only events the operator posts on purpose, under its own name.
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "mlflow-operator"
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or os.uname().nodename
    settings.posting.event_name_prefix = "mlflow-operator-"
    # Events into a namespace being deleted are refused; do not retry them for long.
    settings.posting.default_backoffs = (1, 3)
    # Only training Jobs reach the operator: the API server filters the watch, so neither
    # traffic nor memory grows with the cluster's other Jobs.
    settings.watching.label_selectors[("batch", "v1", "jobs")] = LABEL_TRAINING_RUN
    # Likewise only the Secrets their owners labelled for the operator (with --credentials-watch).
    settings.watching.label_selectors[("", "v1", "secrets")] = f"{CREDENTIALS_LABEL}=true"
    settings.watching.server_timeout = 300
    # kopf runs a worker per object with events. Without a limit, a restart (or a burst) has
    # every object's body, patches and handler state in flight at once, and that peak stays in
    # the process's memory afterwards (allocator fragmentation): with 2,000 Experiments, 231 MiB
    # after a restart instead of 186. Idle workers leave at once, so the limit costs no waiting.
    settings.queueing.worker_limit = QUEUE_WORKERS
    settings.queueing.idle_timeout = 0.5
    # After a patch, kopf keeps the object's worker (and its slot among the 100) until the
    # version the patch wrote comes back through the watch, or this long. Removing the last
    # finalizer deletes the object, so that version never comes: with kopf's 5 s, each deleted
    # object held a slot for 5 s, deletions ran at 20 a second and new objects queued behind
    # them. What was handled does not depend on the body being fresh (decision 0019), and the
    # patched version normally comes back within milliseconds (decision 0021).
    settings.persistence.consistency_timeout = CONSISTENCY_SECONDS
    # An object being deleted keeps kopf's finalizer until its timer has exited. A tick in
    # the middle of a reconcile ends a moment later, but kopf looks again only after this long
    # (60 s by default): a TrainingRun deleted during its timer's tick stayed a minute.
    settings.background.cancellation_polling = TIMER_EXIT_POLL_SECONDS
    # The listing a watch starts with comes in pages, not as one reply of every object: with
    # thousands of objects, one reply (its bytes and their parse, at once) is the start's peak.
    settings.watching.chunk_size = LIST_CHUNK
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # Watching only some namespaces, the operator may not list namespaces or CRDs (namespaced
    # RBAC): serve the namespaces and resources known at start-up.
    settings.scanning.disabled = not config.all_namespaces
    settings.peering.standalone = config.peering is None
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.clusterwide = config.all_namespaces
        settings.peering.mandatory = True
        settings.peering.priority = peering_priority(config)
    return settings


def peering_priority(config: OperatorConfig) -> int:
    """kopf pauses every peer when two share a priority, so each replica takes a distinct
    one: given, or derived from its pod name (the highest one is active, the rest stand by)."""
    if config.peering_priority is not None:
        return config.peering_priority
    identity = os.environ.get("POD_NAME") or os.uname().nodename
    return zlib.crc32(identity.encode()) % 1_000_000


def describe_scope(config: OperatorConfig) -> str:
    return "all namespaces" if config.all_namespaces else "namespaces " + ", ".join(config.namespaces)


def run_operator(config: OperatorConfig) -> None:
    configure_environment(config)
    configure_logging(config)
    metrics.serve(config.metrics_port, config.bind_address)

    registry = kopf.OperatorRegistry()
    register_handlers(registry, config)
    logger.info(
        "mlflow-operator %s watching %s (%s/%s) in %s; default tracking server: %s",
        __version__, ", ".join(KINDS), GROUP, VERSION, describe_scope(config),
        config.default_tracking_uri or "none (objects must set spec.tracking.uri)",
    )
    handled = HandledGenerations()
    settings = build_settings(config, handled)
    identity = kopf_adapter.peer_identity()
    kopf_adapter.run(
        registry=registry,
        settings=settings,
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=settings.peering.priority,
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://{config.bind_address}:{config.health_port}/healthz" if config.health_port else None,
        # The identity kopf records among the peers, known to the drift passes (handlers/drift.py).
        identity=identity,
        memo=kopf.Memo(config=config, **{PEER_IDENTITY: identity, HANDLED: handled}),
    )
