"""Every condition reason the operator writes, in one place: what docs/api.md lists, what
kstatus, Argo CD and `kubectl get` show, and what code matches on (a timer that leaves a
spec problem alone). A StrEnum: each member is its own string in status and Events.
Reasons that come from elsewhere (a Job's own condition reason, e.g. BackoffLimitExceeded)
are passed through as they are."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Every kind
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    INVALID_STATUS = "InvalidStatus"
    KUBERNETES_ERROR = "KubernetesError"
    # Tracking servers and credentials (also MLflow errors: tracking.entities)
    TRACKING_ERROR = "TrackingError"
    TRACKING_UNAVAILABLE = "TrackingUnavailable"
    TRACKING_UNAUTHORIZED = "TrackingUnauthorized"
    TRACKING_REJECTED = "TrackingRejected"
    INVALID_RESPONSE = "InvalidResponse"
    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    INVALID_REQUEST = "InvalidRequest"
    TRACKING_NOT_CONFIGURED = "TrackingNotConfigured"
    TRACKING_SERVER_NOT_ALLOWED = "TrackingServerNotAllowed"
    TRACKING_SERVER_CHANGED = "TrackingServerChanged"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"
    SECRET_UNREADABLE = "SecretUnreadable"
    INVALID_SECRET = "InvalidSecret"
    # Workspace servers (MLflow workspaces with Kubernetes authorization)
    OPERATOR_TOKEN_UNREADABLE = "OperatorTokenUnreadable"
    SERVICE_ACCOUNT_NOT_AUTHORIZED = "ServiceAccountNotAuthorized"
    # Ownership
    CONFLICT = "Conflict"
    NAME_CONFLICT = "NameConflict"
    NAME_OUTSIDE_NAMESPACE = "NameOutsideNamespace"
    NAME_TAKEN_BY_DELETED_EXPERIMENT = "NameTakenByDeletedExperiment"
    RUN_CONFLICT = "RunConflict"
    JOB_CONFLICT = "JobConflict"
    TRIAL_CONFLICT = "TrialConflict"
    # Experiment
    ARTIFACT_LOCATION_MISMATCH = "ArtifactLocationMismatch"
    DELETED_IN_MLFLOW = "DeletedInMLflow"
    WAITING_FOR_RUNS = "WaitingForRuns"
    # RegisteredModel
    VERSION_NOT_FOUND = "VersionNotFound"
    DRIFT_DETECTED = "DriftDetected"
    PROMOTION_BLOCKED = "PromotionBlocked"
    # TrainingRun and TrainingSweep
    EXPERIMENT_NOT_FOUND = "ExperimentNotFound"
    EXPERIMENT_NOT_READY = "ExperimentNotReady"
    EXPERIMENT_DELETED = "ExperimentDeleted"
    INVALID_TEMPLATE = "InvalidTemplate"
    JOB_REJECTED = "JobRejected"
    JOB_PENDING = "JobPending"
    JOB_SUSPENDED = "JobSuspended"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    JOB_FAILED = "JobFailed"
    JOB_DELETED = "JobDeleted"
    KILLED = "Killed"
    MODEL_NOT_FOUND = "ModelNotFound"
    RUN_DELETED_IN_MLFLOW = "RunDeletedInMLflow"
    TOO_MANY_FAILED_TRIALS = "TooManyFailedTrials"
    EARLY_STOPPED = "EarlyStopped"
    EXTENDED = "Extended"
    NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"
    OBJECTIVE_MISSING = "ObjectiveMissing"
