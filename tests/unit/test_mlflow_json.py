"""The MLflow gateway reads MLflow's JSON into the operator's types directly; what it reads is
what MLflow's own client (protobuf, then MLflow's entities) reads from the same answer.

The answers are in the shape MLflow's REST API documents; the e2e tests read them from the
sandbox's real server."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.entities import Experiment, LoggedModel, Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.protos.model_registry_pb2 import SearchModelVersions, SearchRegisteredModels
from mlflow.protos.service_pb2 import GetRun, SearchExperiments, SearchLoggedModels
from mlflow.utils.proto_json_utils import parse_dict

from mlflow_operator.gateways.mlflow import (
    _experiment_from_json,
    _logged_model_from_json,
    _model_version_from_json,
    _registered_model_from_json,
    _run_from_json,
)
from mlflow_operator.tracking.entities import (
    ExperimentInfo,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    RunInfo,
)

TAGS = [{"key": "k8s.namespace", "value": "team-a"}, {"key": "empty", "value": ""}, {"key": "no value"}]


# What the operator read through MLflow's client entities, before decision 0018.

def via_client_experiment(e: Any) -> ExperimentInfo:
    return ExperimentInfo(experiment_id=str(e.experiment_id), name=e.name, lifecycle_stage=e.lifecycle_stage,
                          artifact_location=e.artifact_location, tags=dict(e.tags or {}))


def via_client_run(run: Any) -> RunInfo:
    info, data = run.info, run.data
    return RunInfo(run_id=info.run_id, experiment_id=str(info.experiment_id), run_name=info.run_name,
                   status=str(info.status), lifecycle_stage=info.lifecycle_stage, start_time=info.start_time,
                   end_time=info.end_time, tags=dict(data.tags or {}), params=dict(data.params or {}),
                   metrics=dict(data.metrics or {}))


def via_client_logged_model(m: Any) -> LoggedModelInfo:
    return LoggedModelInfo(model_id=m.model_id, name=m.name, source_run_id=m.source_run_id,
                           status=str(getattr(m.status, "name", m.status)), creation_timestamp=m.creation_timestamp)


def via_client_registered_model(model: Any) -> RegisteredModelInfo:
    return RegisteredModelInfo(name=model.name, description=model.description or "", tags=dict(model.tags or {}),
                               aliases={str(k): str(v) for k, v in (model.aliases or {}).items()},
                               last_updated=model.last_updated_timestamp or None)  # unset: 0


def via_client_model_version(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(name=mv.name, version=str(mv.version), stage=mv.current_stage or "None",
                            description=mv.description or "", source=mv.source, run_id=mv.run_id or None,
                            status=str(mv.status), aliases=tuple(mv.aliases or ()), tags=dict(mv.tags or {}),
                            last_updated=mv.last_updated_timestamp or None)


def test_an_experiment_reads_as_through_mlflows_client():
    answer = {"experiments": [
        {"experiment_id": "7", "name": "team-a/churn", "artifact_location": "mlflow-artifacts:/7",
         "lifecycle_stage": "active", "creation_time": 1, "last_update_time": 2, "tags": TAGS},
        {"experiment_id": "8", "name": "team-a/bare", "lifecycle_stage": "deleted"},
    ]}
    proto = SearchExperiments.Response()
    parse_dict(answer, proto)
    assert [_experiment_from_json(e) for e in answer["experiments"]] == \
        [via_client_experiment(Experiment.from_proto(e)) for e in proto.experiments]


def test_a_run_reads_as_through_mlflows_client():
    answer = {"run": {
        "info": {"run_id": "abc", "run_uuid": "abc", "experiment_id": "7", "run_name": "churn-1",
                 "user_id": "mlflow-operator", "status": "FINISHED", "start_time": 1700000000000,
                 "end_time": 1700000060000, "artifact_uri": "mlflow-artifacts:/7/abc", "lifecycle_stage": "active"},
        "data": {"metrics": [{"key": "auc", "value": 0.91, "timestamp": 1, "step": 0}],
                 "params": [{"key": "lr", "value": "0.1"}], "tags": TAGS},
    }}
    proto = GetRun.Response()
    parse_dict(answer, proto)
    assert _run_from_json(answer["run"]) == via_client_run(Run.from_proto(proto.run))


def test_a_run_just_created_reads_as_through_mlflows_client():
    answer = {"run": {"info": {"run_id": "abc", "experiment_id": "7", "status": "RUNNING",
                               "start_time": 1700000000000, "lifecycle_stage": "active"}, "data": {}}}
    proto = GetRun.Response()
    parse_dict(answer, proto)
    assert _run_from_json(answer["run"]) == via_client_run(Run.from_proto(proto.run))


def test_a_logged_model_reads_as_through_mlflows_client():
    answer = {"models": [{"info": {"model_id": "m-1", "experiment_id": "7", "name": "model",
                                   "source_run_id": "abc", "status": "LOGGED_MODEL_READY",
                                   "creation_timestamp_ms": 1700000000000}}]}
    proto = SearchLoggedModels.Response()
    parse_dict(answer, proto)
    assert [_logged_model_from_json(m) for m in answer["models"]] == \
        [via_client_logged_model(LoggedModel.from_proto(m)) for m in proto.models]


def test_a_registered_model_reads_as_through_mlflows_client():
    answer = {"registered_models": [
        {"name": "churn", "description": "d", "creation_timestamp": 1, "last_updated_timestamp": 5, "tags": TAGS,
         "aliases": [{"alias": "champion", "version": "3"}, {"alias": "challenger", "version": "4"}]},
        {"name": "bare"},
    ]}
    proto = SearchRegisteredModels.Response()
    parse_dict(answer, proto)
    assert [_registered_model_from_json(m) for m in answer["registered_models"]] == \
        [via_client_registered_model(RegisteredModel.from_proto(m)) for m in proto.registered_models]


def test_a_model_version_reads_as_through_mlflows_client():
    answer = {"model_versions": [
        {"name": "churn", "version": "3", "current_stage": "Production", "description": "d",
         "source": "models:/m-1", "run_id": "abc", "status": "READY", "tags": TAGS, "aliases": ["champion"],
         "last_updated_timestamp": "1733400000123"},
        {"name": "churn", "version": "4", "source": "s3://x", "status": "PENDING_REGISTRATION"},
    ]}
    proto = SearchModelVersions.Response()
    parse_dict(answer, proto)
    assert [_model_version_from_json(v) for v in answer["model_versions"]] == \
        [via_client_model_version(ModelVersion.from_proto(v)) for v in proto.model_versions]


@pytest.mark.parametrize("parse, answer", [
    (_experiment_from_json, 1),
    (_experiment_from_json, {"name": "no id"}),
    (_experiment_from_json, {"experiment_id": "1", "tags": [1]}),
    (_experiment_from_json, {"experiment_id": "1", "tags": {"key": "k"}}),
    (_experiment_from_json, {"experiment_id": {"nested": 1}}),
    (_run_from_json, {"info": {"run_id": "r"}, "data": {"metrics": [{"key": "m", "value": "high"}]}}),
    (_run_from_json, {"info": []}),
    (_registered_model_from_json, {"name": "m", "aliases": [{"version": "1"}]}),
    (_model_version_from_json, {"name": "m", "version": "1", "aliases": [{}]}),
    (_logged_model_from_json, {"info": {"name": "model"}}),
])
def test_an_answer_not_in_mlflows_shape_is_an_invalid_response(parse, answer):
    from mlflow_operator.tracking.entities import InvalidResponse

    with pytest.raises(InvalidResponse) as refused:
        parse(answer)
    assert "high" not in str(refused.value) and "nested" not in str(refused.value)
