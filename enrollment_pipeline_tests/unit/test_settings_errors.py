"""A bad setting is one line naming the variable, its value (secrets masked) and what is
allowed: from the console command (a real process, as a user runs it) and from
`dagster definitions validate`. Nothing here needs a service: settings are checked first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from enrollment_pipeline.lib.settings_errors import SettingsError, check
from enrollment_pipeline.settings import (
    ArchiveSettings,
    EmailSettings,
    IngestSettings,
    KafkaSettings,
    MongoSettings,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = [str(BIN / "enrollment-pipeline")]


def run(args: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 120):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MONGO_"))}
    clean.pop("DAGSTER_HOME", None)
    return subprocess.run(
        args,
        env={**clean, "STACK_STATE_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# variable, bad value, a command that reads it, what the line says is allowed
BAD = [
    ("MONGO_TIMEOUT_MS", "abc", ["status"], "a whole number, at least 100"),
    ("INGEST_MAX_EVENTS_PER_RUN", "-5", ["status"], "a whole number, at least 1"),
    ("EMAIL_BACKEND", "carrier-pigeon", ["demo"], "one of smtp, ses"),
    ("FOLLOWUP_QUIET_HOURS", "25-07", ["demo"], "two UTC hours START-END"),
    ("LEAD_API_URL", "ftp://crm.example", ["dead-letters", "redrive", "--leads"], "https://"),
    ("AWS_ENDPOINT_URL", "localhost:4566", ["stack", "env"], "an http:// or https:// URL"),
    ("ARCHIVE_ROOT", "gs://bucket/history", ["stack", "env"], "a folder or s3://bucket/prefix"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", ["offsets", "show"], "host:port pairs"),
    ("STACK_KAFKA_PORT", "ninety", ["stack", "status"], "a whole number"),
]


@pytest.mark.parametrize(("name", "value", "command", "allowed"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path, name, value, command, allowed):
    result = run([*CLI, *command], {name: value}, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {name}={value!r}: must be ")
    assert allowed in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_secret_is_masked_and_debug_shows_the_traceback(tmp_path):
    env = {"MONGO_URI": "mysql://admin:hunter2@db.example/"}
    result = run([*CLI, "status"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: MONGO_URI='mysql://***@db.example/': must be a mongodb:// or mongodb+srv:// "
        "URI with a host"
    )
    debug = run([*CLI, "--debug", "status"], env, tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "SettingsError" in debug.stderr
    assert "hunter2" not in result.stderr + debug.stderr
    by_variable = run([*CLI, "status"], {**env, "ENROLLMENT_PIPELINE_DEBUG": "1"}, tmp_path)
    assert "Traceback" in by_variable.stderr


def test_every_bad_variable_of_the_groups_a_command_reads_at_once(tmp_path):
    env = {
        "MONGO_TIMEOUT_MS": "abc",
        "INGEST_MAX_EVENTS_PER_RUN": "-5",
        "EMAIL_BACKEND": "carrier-pigeon",
    }
    # `status` reads Kafka, MongoDB and ingestion settings: two lines, not EMAIL_BACKEND.
    result = run([*CLI, "status"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: MONGO_TIMEOUT_MS='abc': must be a whole number, at least 100",
        "Error: INGEST_MAX_EVENTS_PER_RUN='-5': must be a whole number, at least 1",
    ]
    # `stack …` reads none of them.
    shown = run([*CLI, "stack", "env"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    pairs = dict(line.split("=", 1) for line in shown.stdout.splitlines())
    assert Path(pairs["ARCHIVE_ROOT"]).is_absolute()
    assert pairs["DAGSTER_HOME"] == str(tmp_path / "dagster_home")


def test_check_lists_every_bad_variable_of_every_group(monkeypatch):
    for name, value in {
        "MONGO_TIMEOUT_MS": "abc",
        "INGEST_MAX_EVENTS_PER_RUN": "-5",
        "EMAIL_BACKEND": "carrier-pigeon",
        "SMTP_PORT": "70000",
        "ARCHIVE_START_DATE": "2024-13-01",
        "INGEST_MAX_DEAD_LETTER_RATE": "2",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        check(KafkaSettings, MongoSettings, IngestSettings, EmailSettings, ArchiveSettings)
    assert raised.value.lines == [
        "MONGO_TIMEOUT_MS='abc': must be a whole number, at least 100",
        "INGEST_MAX_EVENTS_PER_RUN='-5': must be a whole number, at least 1",
        "INGEST_MAX_DEAD_LETTER_RATE='2': must be a number, from 0 to 1",
        "EMAIL_BACKEND='carrier-pigeon': must be one of smtp, ses",
        "SMTP_PORT='70000': must be a whole number, from 1 to 65535",
        "ARCHIVE_START_DATE='2024-13-01': must be a date YYYY-MM-DD",
    ]


def test_dagster_definitions_validate_names_every_bad_variable(tmp_path):
    env = {name: value for name, value, _, _ in BAD if not name.startswith("STACK_")}
    env["MONGO_URI"] = "mysql://admin:hunter2@db.example/"
    result = run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "enrollment_pipeline.definitions"],
        env,
        tmp_path,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for name, value in env.items():
        shown = "'mysql://***@db.example/'" if name == "MONGO_URI" else repr(value)
        assert f"\n{name}={shown}: must be " in output or f"SettingsError: {name}={shown}" in output
    assert "hunter2" not in output
    assert "Error while building definitions for" not in output  # not a module's tree


def test_the_readme_validate_command_passes_without_the_location_name_warning(tmp_path):
    result = run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        {},
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stdout + result.stderr
    assert "does not match the name" not in result.stdout + result.stderr
