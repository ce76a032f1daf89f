"""What the operator keeps in memory between reconciles, so that it reads less: what the
watches have seen, MLflow searches shared by a drift pass, and what earlier calls taught it.
Losing any of it (a restart) costs reads, never correctness."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlflow_operator.caches.histories import EndedHistories
from mlflow_operator.caches.jobs import HandledJobs
from mlflow_operator.caches.pages import ExperimentPages, ModelPages
from mlflow_operator.caches.remembered import RecentlyAccepted, RememberedCredentials
from mlflow_operator.caches.watches import Watched


@dataclass(frozen=True)
class Caches:
    """Every cache a reconcile may read, in one place (Services.caches)."""

    # What the watches have seen (watch caches); without them, reads through the gateway.
    watched: Watched = field(default_factory=Watched)
    # The last state of each TrainingRun's Job a reconcile acted on.
    handled_jobs: HandledJobs = field(default_factory=HandledJobs)
    # Job shapes a dry run accepted lately.
    accepted_job_shapes: RecentlyAccepted = field(default_factory=RecentlyAccepted)
    # Training ServiceAccounts Kubernetes RBAC let log to an experiment (workspace servers).
    granted_service_accounts: RecentlyAccepted = field(default_factory=RecentlyAccepted)
    # Credentials read from Secrets, for cleanup after a Secret is gone.
    remembered: RememberedCredentials = field(default_factory=RememberedCredentials)
    # Pages shared by the drift checks of Experiments and RegisteredModels (None: each reconciles).
    experiment_pages: ExperimentPages | None = None
    model_pages: ModelPages | None = None
    # When this process started, and the TrainingRuns it has tried to create a run for.
    started_at: float = field(default_factory=time.time)
    run_attempts: set[str] = field(default_factory=set)
    # Objective histories of ended trials (median stopping compares running trials with them).
    ended_histories: EndedHistories = field(default_factory=EndedHistories)
