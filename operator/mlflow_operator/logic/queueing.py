"""What a batch queue (Kueue) reads on a training Job, passed through from the object.

Kueue admits a Job by the `kueue.x-k8s.io/queue-name` label on the Job itself (and reads
`kueue.x-k8s.io/priority-class` and the other labels under its prefix); it suspends the Job
until the whole of it fits, then resumes it. Only labels under these prefixes travel from a
TrainingRun (or a sweep, to its trials) to the Job: other labels, such as Argo CD's tracking
label, would make tools take the Job for one of their own.
"""

from __future__ import annotations

from typing import Any, Mapping

QUEUE_LABEL_PREFIXES = ("kueue.x-k8s.io/",)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def queue_labels(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The object's labels a queue reads, to be set on its Job (or on a sweep's trials)."""
    labels = metadata.get("labels") or {}
    return {str(key): str(value) for key, value in labels.items()
            if any(str(key).startswith(prefix) for prefix in QUEUE_LABEL_PREFIXES)}
