"""The shared searches read MLflow's JSON into the operator's types directly; what they read
is what the REST stores' protobuf path (used by every other call) reads from the same answer.

The answers are in the shape MLflow's REST API documents; the drift tests in tests/e2e read
them from the sandbox's real server."""

from __future__ import annotations

from mlflow.entities import Experiment
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.protos.model_registry_pb2 import SearchModelVersions, SearchRegisteredModels
from mlflow.protos.service_pb2 import SearchExperiments
from mlflow.utils.proto_json_utils import parse_dict

from mlflow_operator.gateways.mlflow import (
    _experiment,
    _experiment_from_json,
    _model_version,
    _model_version_from_json,
    _registered_model,
    _registered_model_from_json,
)

TAGS = [{"key": "k8s.namespace", "value": "team-a"}, {"key": "empty", "value": ""}, {"key": "no value"}]


def test_an_experiment_reads_the_same_as_through_protobuf():
    answer = {"experiments": [
        {"experiment_id": "7", "name": "team-a/churn", "artifact_location": "mlflow-artifacts:/7",
         "lifecycle_stage": "active", "creation_time": 1, "last_update_time": 2, "tags": TAGS},
        {"experiment_id": "8", "name": "team-a/bare", "lifecycle_stage": "deleted"},
    ]}
    proto = SearchExperiments.Response()
    parse_dict(answer, proto)
    assert [_experiment_from_json(e) for e in answer["experiments"]] == \
        [_experiment(Experiment.from_proto(e)) for e in proto.experiments]


def test_a_registered_model_reads_the_same_as_through_protobuf():
    answer = {"registered_models": [
        {"name": "churn", "description": "d", "creation_timestamp": 1, "tags": TAGS,
         "aliases": [{"alias": "champion", "version": "3"}, {"alias": "challenger", "version": "4"}]},
        {"name": "bare"},
    ]}
    proto = SearchRegisteredModels.Response()
    parse_dict(answer, proto)
    assert [_registered_model_from_json(m) for m in answer["registered_models"]] == \
        [_registered_model(RegisteredModel.from_proto(m)) for m in proto.registered_models]


def test_a_model_version_reads_the_same_as_through_protobuf():
    answer = {"model_versions": [
        {"name": "churn", "version": "3", "current_stage": "Production", "description": "d",
         "source": "models:/m-1", "run_id": "abc", "status": "READY", "tags": TAGS, "aliases": ["champion"]},
        {"name": "churn", "version": "4", "source": "s3://x", "status": "PENDING_REGISTRATION"},
    ]}
    proto = SearchModelVersions.Response()
    parse_dict(answer, proto)
    assert [_model_version_from_json(v) for v in answer["model_versions"]] == \
        [_model_version(ModelVersion.from_proto(v)) for v in proto.model_versions]
