"""Failed requests to MLflow become the operator's error types, with short readable messages.
The failures are built as `requests` raises them (a fault the live server cannot be made to
show on demand, such as a timeout, is only covered here); e2e tests meet the real ones."""

import io
from typing import Any

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ResponseError

from mlflow_operator.gateways.mlflow import Answered, filter_literal, model_name_filter, translate
from mlflow_operator.tracking.entities import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    TrackingRejected,
    TrackingUnauthorized,
    TrackingUnavailable,
)

SERVER = "http://127.0.0.1:5000"
SECRET = "AKIA-instance-metadata-credentials"
# urllib3 keeps the pool and connection only to describe them; these errors never reach one.
NO_POOL: Any = None
NO_CONNECTION: Any = None


def test_connection_refused_is_unavailable_with_a_short_message():
    cause = NewConnectionError(NO_CONNECTION, "Failed to establish a new connection: [Errno 111] Connection refused")
    error = requests.exceptions.ConnectionError(MaxRetryError(NO_POOL, "/api/2.0/mlflow/experiments/get", cause))
    translated = translate(error, "get_experiment", "http://127.0.0.1:9")
    assert isinstance(translated, TrackingUnavailable)
    assert str(translated) == "cannot connect to http://127.0.0.1:9: connection refused"


def test_a_timeout_is_unavailable():
    error = requests.exceptions.ReadTimeout("HTTPSConnectionPool: Read timed out. (read timeout=10)")
    assert str(translate(error, "get_run", "https://mlflow.example.com")) == \
        "no answer from https://mlflow.example.com in time"


def test_server_errors_past_the_retries_are_unavailable():
    error = requests.exceptions.RetryError(MaxRetryError(NO_POOL, "/x", ResponseError("too many 503 error responses")))
    assert str(translate(error, "get_run", SERVER)) == f"{SERVER} kept answering with server errors (5xx)"


def test_a_tls_failure_says_so():
    error = requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert str(translate(error, "get_run", SERVER)) == f"TLS failed with {SERVER} (certificate verify failed)"


def test_mlflow_error_codes_map_to_error_types():
    assert isinstance(translate(Answered(404, "RESOURCE_DOES_NOT_EXIST")), NotFound)
    assert isinstance(translate(Answered(400, "RESOURCE_ALREADY_EXISTS")), AlreadyExists)
    assert isinstance(translate(Answered(400, "INVALID_PARAMETER_VALUE")), InvalidRequest)
    assert isinstance(translate(Answered(403, "PERMISSION_DENIED")), TrackingUnauthorized)
    assert isinstance(translate(Answered(500, "INTERNAL_ERROR")), TrackingUnavailable)


@pytest.mark.parametrize("status, kind", [
    (404, NotFound), (401, TrackingUnauthorized), (403, TrackingUnauthorized), (400, InvalidRequest),
    (418, TrackingRejected), (500, TrackingUnavailable), (503, TrackingUnavailable), (429, TrackingUnavailable),
    (302, TrackingRejected),
])
def test_an_answer_without_an_error_code_maps_by_its_status(status, kind):
    translated = translate(Answered(status), "get_experiment", SERVER)
    assert isinstance(translated, kind)
    assert f"HTTP {status}" in str(translated) and "get_experiment" in str(translated)


def test_a_success_that_is_not_mlflow_json_is_rejected():
    translated = translate(Answered(200), "get_experiment", SERVER)
    assert isinstance(translated, TrackingRejected) and "not with MLflow's JSON" in str(translated)


class Reply(requests.Response):
    def __init__(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.raw, self.status_code = io.BytesIO(body), 200  # read as a stream, as the gateway reads
        self.headers.update(headers or {})


def test_only_an_error_code_name_is_kept_from_a_reply():
    from mlflow_operator.gateways.mlflow import _error_code

    assert _error_code(b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "' + SECRET.encode() + b'"}') \
        == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(b'{"error_code": "' + SECRET.encode() + b'"}') is None
    assert _error_code(SECRET.encode()) is None


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


def test_a_name_with_both_quotes_has_no_filter_rather_than_a_wide_one():
    with pytest.raises(TrackingRejected, match="both kinds of quote"):
        model_name_filter("a'b\"c")


def test_an_answer_longer_than_the_cap_is_not_read_whole():
    from mlflow_operator.gateways.mlflow import ReplyTooLarge, _read_capped

    assert _read_capped(Reply(b"x" * 100), limit=100) == b"x" * 100
    with pytest.raises(ReplyTooLarge):
        _read_capped(Reply(b"x" * 101), limit=100)
    with pytest.raises(ReplyTooLarge):
        _read_capped(Reply(b"{}", headers={"Content-Length": "1000000000"}), limit=100)


def test_a_reply_too_large_is_an_invalid_response_that_names_no_content():
    from mlflow_operator.gateways.mlflow import ReplyTooLarge
    from mlflow_operator.tracking.entities import InvalidResponse

    translated = translate(ReplyTooLarge(), "search_experiments", SERVER)
    assert isinstance(translated, InvalidResponse) and "MiB" in str(translated)
