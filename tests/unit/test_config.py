"""Operator flags and their environment-variable fallbacks."""

import argparse
import tempfile
from pathlib import Path

import pytest

from mlflow_operator.runtime.config import add_run_arguments, config_from_args

KEYS = tempfile.mkdtemp(prefix="ownership-keys-")
(Path(KEYS) / "k1").write_bytes(b"a" * 32)


def parse(argv, env=None):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args(["--ownership-keys", KEYS, *argv]), environ=env or {})


def test_defaults_watch_all_namespaces():
    config = parse([])
    assert config.all_namespaces and config.namespaces == ()
    assert config.drift_interval == 60


def test_namespaces_from_flags_or_environment():
    assert parse(["-n", "a", "-n", "b"]).namespaces == ("a", "b")
    config = parse([], {"MLFLOW_OPERATOR_NAMESPACES": "x, y"})
    assert config.namespaces == ("x", "y") and not config.all_namespaces


def test_default_credentials_come_from_the_standard_mlflow_variables():
    config = parse(["--tracking-uri", "http://m:5000/"], {"MLFLOW_TRACKING_TOKEN": "t"})
    assert config.default_tracking_uri == "http://m:5000"
    assert config.default_credentials.token == "t"


def test_a_non_http_tracking_uri_is_refused():
    with pytest.raises(SystemExit):
        parse(["--tracking-uri", "sqlite:///x.db"])


@pytest.mark.parametrize("argv, message", [
    (["--drift-interval", "0"], "--drift-interval: 0 must be at least"),
    (["--drift-interval", "soon"], "'soon' is not a number"),
    (["--mlflow-concurrency", "0"], "--mlflow-concurrency: 0 must be between 1 and 64"),
    (["--health-port", "70000"], "must be between 0 and 65535"),
    (["--mlflow-max-retries", "-1"], "must be between 0 and 10"),
])
def test_out_of_range_flags_are_refused_with_the_range(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_credentials_in_the_tracking_uri_are_refused():
    with pytest.raises(SystemExit) as raised:
        parse(["--tracking-uri", "https://bob:pw@mlflow.example.com"])
    assert "must not contain credentials" in str(raised.value) and "pw" not in str(raised.value)


def test_allowed_tracking_servers_from_flags_or_environment():
    config = parse(["--tracking-uri", "http://m:5000", "--allowed-tracking-server", "https://a.example.com/"])
    assert config.allowed_tracking_servers == ("https://a.example.com",)
    assert config.allowlist.allows("https://a.example.com/x") and config.allowlist.allows("http://m:5000")
    config = parse([], {"MLFLOW_OPERATOR_ALLOWED_TRACKING_SERVERS": "https://a.example.com, http://b:80"})
    assert config.allowlist.allows("http://b") and not config.allowlist.allows("http://c")


def test_an_allowlist_entry_with_a_query_is_refused():
    with pytest.raises(SystemExit) as raised:
        parse(["--allowed-tracking-server", "http://a.example.com/?x=1"])
    assert "--allowed-tracking-server" in str(raised.value)


def test_the_ownership_keys_are_read_from_their_directory_and_the_last_name_signs(tmp_path):
    (tmp_path / "2026-01").write_bytes(b"old" * 11)
    (tmp_path / "2026-06").write_bytes(b"new" * 11 + b"\n")
    (tmp_path / "..data").mkdir()  # as a mounted Secret has
    config = parse(["--ownership-keys", str(tmp_path)])
    assert [key_id for key_id, _ in config.ownership_keys.keys] == ["2026-01", "2026-06"]
    assert config.ownership_keys.sign(b"m").startswith("v1.2026-06.")


def test_a_short_or_missing_ownership_key_stops_the_operator(tmp_path):
    (tmp_path / "k").write_bytes(b"short")
    with pytest.raises(SystemExit, match="shorter than 32 bytes"):
        parse(["--ownership-keys", str(tmp_path)])
    with pytest.raises(SystemExit, match="--ownership-keys"):
        parse(["--ownership-keys", str(tmp_path / "absent")])
