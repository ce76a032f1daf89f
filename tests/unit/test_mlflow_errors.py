"""MLflow's exceptions become the operator's error types, with short readable messages.
The exceptions are built as MLflow builds them (a fault the live server cannot be made to
show on demand, such as a timeout, is only covered here)."""

from mlflow.exceptions import MlflowException, RestException

from mlflow_operator.gateways.mlflow import translate
from mlflow_operator.tracking import AlreadyExists, InvalidRequest, NotFound, TrackingUnauthorized, TrackingUnavailable


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
