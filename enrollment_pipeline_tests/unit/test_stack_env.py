"""`enrollment-pipeline stack env` prints KEY=VALUE lines (Contract 6)."""

from __future__ import annotations

from click.testing import CliRunner

from enrollment_pipeline.cli import main


def test_stack_env_prints_key_value_lines_for_the_configured_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STACK_KAFKA_PORT", "19092")
    monkeypatch.setenv("STACK_MONGO_PORT", "17017")
    monkeypatch.setenv("MONGO_DATABASE", "enrollment_dev")
    result = CliRunner().invoke(main, ["stack", "env"])
    assert result.exit_code == 0
    pairs = dict(line.split("=", 1) for line in result.output.splitlines())
    assert pairs["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert pairs["MONGO_URI"] == "mongodb://127.0.0.1:17017/"
    assert pairs["MONGO_DATABASE"] == "enrollment_dev"
    assert {"ENROLLMENT_TOPIC", "LEAD_TOPIC", "EMAIL_BACKEND", "SMTP_HOST", "SMTP_PORT"} <= set(
        pairs
    )
    assert all(key.isupper() and " " not in value for key, value in pairs.items())


def test_stack_env_lets_a_token_go_to_the_loopback_crm_double_over_http(monkeypatch, tmp_path):
    from enrollment_pipeline.lib.clients.crm import CrmClient
    from enrollment_pipeline.settings import PipelineSettings

    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["stack", "env"])
    assert result.exit_code == 0
    pairs = dict(line.split("=", 1) for line in result.output.splitlines())
    assert pairs["LEAD_API_URL"].startswith("http://127.0.0.1:")
    assert pairs["LEAD_API_ALLOW_HTTP"] == "true"
    for name, value in pairs.items():  # as `eval $(enrollment-pipeline stack env)` does
        monkeypatch.setenv(name, value)
    settings = PipelineSettings()
    CrmClient(
        base_url=settings.lead_api_url, token="t0ken", allow_http=settings.lead_api_allow_http
    ).check_config()

    monkeypatch.setenv("STACK_HOST", "10.0.0.5")  # a double reached over a network: no
    monkeypatch.setenv("STACK_ALLOW_REMOTE", "true")
    result = CliRunner().invoke(main, ["stack", "env"])
    assert result.exit_code == 0, result.output
    assert "LEAD_API_ALLOW_HTTP" not in result.output


def test_a_non_loopback_stack_host_is_refused_in_one_line_naming_stack_allow_remote(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STACK_HOST", "10.0.0.5")
    for command in (["stack", "up"], ["stack", "env"], ["stack", "status"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        (line,) = result.output.strip().splitlines()
        assert "STACK_HOST=10.0.0.5" in line and "STACK_ALLOW_REMOTE=true" in line
    assert not any(tmp_path.iterdir())  # refused before anything was made


def test_stack_env_gives_postgres_its_generated_password_kept_for_the_owner_only(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["stack", "env"])
    assert result.exit_code == 0, result.output
    pairs = dict(line.split("=", 1) for line in result.output.splitlines())
    kept = tmp_path / "secrets" / "postgres-password"
    password = kept.read_text().strip()
    assert len(password) >= 32
    assert pairs["DAGSTER_PG_URL"].startswith(f"postgresql://enrollment:{password}@127.0.0.1:")
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    again = CliRunner().invoke(main, ["stack", "env"])
    assert again.output == result.output  # generated once, then kept


def test_stack_env_secure_before_the_secured_stack_ran_says_how_to_start_it(monkeypatch, tmp_path):
    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["stack", "env", "--secure"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "STACK_SECURE=true enrollment-pipeline stack up" in line
