"""MLflow's exceptions become the operator's error types, with short readable messages.
The exceptions are built as MLflow builds them (a fault the live server cannot be made to
show on demand, such as a timeout, is only covered here)."""

import pytest
from mlflow.exceptions import MlflowException, RestException

from mlflow_operator.gateways.mlflow import filter_literal, model_name_filter, translate
from mlflow_operator.tracking import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    TrackingRejected,
    TrackingUnauthorized,
    TrackingUnavailable,
)


def test_connection_refused_is_unavailable_with_a_short_message():
    error = MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/experiments/get failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /x "
        "(Caused by NewConnectionError(\"...: [Errno 111] Connection refused\"))")
    translated = translate(error)
    assert isinstance(translated, TrackingUnavailable)
    assert str(translated) == "cannot connect to http://127.0.0.1:9: connection refused"


def test_a_timeout_is_unavailable():
    error = MlflowException("API request to https://mlflow.example.com/api/2.0/x failed with timeout exception "
                            "HTTPSConnectionPool: Read timed out. (read timeout=10)")
    assert str(translate(error)) == "no answer from https://mlflow.example.com in time"


def test_rest_error_codes_map_to_error_types():
    assert isinstance(translate(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"})), NotFound)
    assert isinstance(translate(RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "x"})), AlreadyExists)
    assert isinstance(translate(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "x"})), InvalidRequest)
    assert isinstance(translate(RestException({"error_code": "PERMISSION_DENIED", "message": "x"})), TrackingUnauthorized)
    assert isinstance(translate(RestException({"error_code": "INTERNAL_ERROR", "message": "x"})), TrackingUnavailable)


SECRET = "AKIA-instance-metadata-credentials"


def non_json_reply(status: int, body: str = SECRET) -> MlflowException:
    """What MLflow's client raises for a reply that is not JSON (rest_utils.verify_rest_response)."""
    from mlflow.protos.databricks_pb2 import ErrorCode
    from mlflow.utils.rest_utils import get_error_code

    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/experiments/get failed with error code {status} != 200. "
        f"Response body: '{body}'", error_code=get_error_code(status) or ErrorCode.Value("INTERNAL_ERROR"))


@pytest.mark.parametrize("status, kind", [
    (404, NotFound), (401, TrackingUnauthorized), (403, TrackingUnauthorized), (400, InvalidRequest),
    (418, TrackingRejected), (500, TrackingUnavailable), (503, TrackingUnavailable), (429, TrackingUnavailable),
])
def test_a_reply_body_is_never_repeated_only_its_status(status, kind):
    translated = translate(non_json_reply(status), "get_experiment", "http://127.0.0.1:5000")
    assert isinstance(translated, kind)
    assert SECRET not in str(translated)
    assert f"HTTP {status}" in str(translated) and "get_experiment" in str(translated)


def test_the_message_of_a_json_error_reply_is_not_repeated():
    error = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": SECRET})
    translated = translate(error, "get_run", "http://127.0.0.1:5000")
    assert isinstance(translated, NotFound) and SECRET not in str(translated)
    assert "RESOURCE_DOES_NOT_EXIST" in str(translated)


def test_an_unknown_error_code_in_a_reply_is_not_repeated():
    translated = translate(RestException({"error_code": SECRET, "message": "x"}), "get_run")
    assert SECRET not in str(translated)


def test_a_success_that_is_not_mlflow_json_is_rejected_without_the_body():
    error = MlflowException("API request to endpoint was successful but the response body was not in a valid "
                            f"JSON format. Response body: '{SECRET}'")
    translated = translate(error, "get_experiment", "http://127.0.0.1:5000")
    assert isinstance(translated, TrackingRejected) and SECRET not in str(translated)


@pytest.mark.parametrize("value, literal", [
    ("churn", "'churn'"), ("bob's", "\"bob's\""), ('say "hi"', "'say \"hi\"'"), ("a'b\"c", None),
])
def test_filter_literals_use_the_quote_the_value_lacks(value, literal):
    assert filter_literal(value) == literal


def test_filter_literals_parse_back_to_the_value_in_mlflow():
    from mlflow.utils.search_utils import SearchModelVersionUtils

    for name in ("bob's model", 'the "best"', "plain"):
        parsed = SearchModelVersionUtils.parse_search_filter(model_name_filter(name))
        assert parsed[0]["value"] == name


def test_a_name_with_both_quotes_is_searched_by_prefix_and_filtered_after():
    assert model_name_filter("a'b\"c") == "name LIKE 'a%'"
