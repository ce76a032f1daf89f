"""Which server and credentials an object uses, and what a Secret must contain."""

import pytest

from mlflow_operator.api.common import TrackingSpec
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.choice import choose_target, credentials_from_secret
from mlflow_operator.tracking.servers import Credentials

DEFAULT = "http://mlflow.mlflow.svc:5000"
OTHER = "https://other.example.com"


def spec(**kwargs) -> TrackingSpec:
    return TrackingSpec.model_validate(kwargs)


def test_without_spec_tracking_the_default_server_and_operator_credentials_apply():
    choice = choose_target(None, OperatorConfig(default_tracking_uri=DEFAULT))
    assert (choice.uri, choice.secret_name, choice.use_operator_credentials) == (DEFAULT, None, True)


def test_a_server_chosen_by_the_object_never_gets_the_operators_credentials():
    config = OperatorConfig(default_tracking_uri=DEFAULT, allowed_tracking_servers=(OTHER,))
    choice = choose_target(spec(uri=OTHER), config)
    assert choice.use_operator_credentials is False and choice.secret_name is None


def test_secret_ref_wins_over_the_default_secret():
    config = OperatorConfig(default_tracking_uri=DEFAULT, default_tracking_secret="shared")
    assert choose_target(spec(secretRef={"name": "mine"}), config).secret_name == "mine"
    assert choose_target(None, config).secret_name == "shared"


def test_the_default_secret_is_not_used_for_another_server():
    config = OperatorConfig(default_tracking_uri=DEFAULT, default_tracking_secret="shared",
                            allowed_tracking_servers=(OTHER,))
    assert choose_target(spec(uri=OTHER), config).secret_name is None


def test_no_server_at_all_is_tracking_not_configured():
    with pytest.raises(ReconcileProblem) as raised:
        choose_target(None, OperatorConfig())
    assert raised.value.outcome.reason == "TrackingNotConfigured"
    assert raised.value.outcome.state == "stalled"


def test_credentials_in_the_uri_are_rejected():
    with pytest.raises(ReconcileProblem) as raised:
        choose_target(spec(uri="https://bob:pw@mlflow.example.com"), OperatorConfig())
    assert "must not contain credentials" in raised.value.outcome.message
    assert "pw" not in raised.value.outcome.message


def test_token_beats_basic_auth():
    assert credentials_from_secret("ns", "s", {"token": "t", "username": "u", "password": "p"}) == Credentials(token="t")


def test_basic_auth_needs_both_keys():
    assert credentials_from_secret("ns", "s", {"username": "u", "password": "p"}) == Credentials("u", "p")
    with pytest.raises(ReconcileProblem) as raised:
        credentials_from_secret("ns", "s", {"username": "u"})
    assert raised.value.outcome.reason == "InvalidSecret"


def test_a_missing_secret_is_waited_for():
    with pytest.raises(ReconcileProblem) as raised:
        credentials_from_secret("ns", "creds", None)
    assert raised.value.outcome.reason == "SecretNotFound"
    assert raised.value.outcome.state == "progressing"


def test_credentials_repr_hides_secrets():
    text = repr(Credentials(username="u", password="hunter2", token="tok"))
    assert "hunter2" not in text and "tok" not in text


def reason_for(uri: str, config: OperatorConfig) -> str:
    with pytest.raises(ReconcileProblem) as raised:
        choose_target(spec(uri=uri), config)
    assert raised.value.outcome.state == "stalled"
    return raised.value.outcome.reason


def test_a_server_not_in_the_allowlist_is_refused():
    assert reason_for("http://169.254.169.254", OperatorConfig(default_tracking_uri=DEFAULT)) == \
        "TrackingServerNotAllowed"


@pytest.mark.parametrize("uri", [
    "https://other.example.com/mlflow",  # the path is not compared
    "https://OTHER.example.com:443",  # nor the case of the host, nor the scheme's own port
])
def test_allowlist_entries_match_scheme_host_and_port(uri):
    config = OperatorConfig(default_tracking_uri=DEFAULT, allowed_tracking_servers=(OTHER,))
    assert choose_target(spec(uri=uri), config).uri == uri


@pytest.mark.parametrize("uri", ["http://other.example.com", "https://other.example.com:8443",
                                 "https://other.example.com.evil.test"])
def test_another_scheme_port_or_host_is_not_the_allowed_server(uri):
    config = OperatorConfig(default_tracking_uri=DEFAULT, allowed_tracking_servers=(OTHER,))
    assert reason_for(uri, config) == "TrackingServerNotAllowed"


def test_the_default_server_is_always_allowed():
    assert choose_target(spec(uri=DEFAULT + "/"), OperatorConfig(default_tracking_uri=DEFAULT)).uri == DEFAULT


@pytest.mark.parametrize("uri", [
    "http://169.254.169.254/latest/meta-data?x=/api/2.0",
    "http://mlflow.mlflow.svc:5000#/api",
    "http://user@mlflow.mlflow.svc:5000",
])
def test_queries_fragments_and_user_info_are_invalid_before_the_allowlist_is_read(uri):
    assert reason_for(uri, OperatorConfig(default_tracking_uri=DEFAULT)) == "InvalidSpec"


def test_a_secret_without_the_opt_in_label_is_not_used():
    with pytest.raises(ReconcileProblem) as raised:
        credentials_from_secret("ns", "sa-token", {"token": "eyJ..."}, opted_in=False)
    outcome = raised.value.outcome
    assert (outcome.reason, outcome.state) == ("SecretNotAllowed", "stalled")
    assert "mlflow.operator.dev/credentials=true" in outcome.message and "eyJ" not in outcome.message
