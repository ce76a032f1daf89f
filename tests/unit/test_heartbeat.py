"""The heartbeat file behind exec probes, and the `probe` command that reads it."""

from __future__ import annotations

import time

from mlflow_operator.runtime.cli import main
from mlflow_operator.runtime.heartbeat import age_seconds, beat_once


def test_a_fresh_beat_passes_the_probe(tmp_path):
    beat = tmp_path / "heartbeat"
    beat_once(beat)
    assert main(["probe", f"--heartbeat-file={beat}", "--max-age=30"]) == 0


def test_a_stale_beat_fails_the_probe(tmp_path):
    beat = tmp_path / "heartbeat"
    beat.write_text(f"{time.time() - 120}\n")
    assert main(["probe", f"--heartbeat-file={beat}", "--max-age=30"]) == 1


def test_no_beat_at_all_fails_the_probe(tmp_path):
    assert main(["probe", f"--heartbeat-file={tmp_path / 'missing'}"]) == 1


def test_the_age_is_measured_from_the_time_written(tmp_path):
    beat = tmp_path / "heartbeat"
    beat.write_text("1000.0\n")
    assert age_seconds(beat, now=1012.5) == 12.5


def test_a_garbled_file_counts_as_no_beat(tmp_path):
    beat = tmp_path / "heartbeat"
    beat.write_text("not a time")
    assert age_seconds(beat) is None
