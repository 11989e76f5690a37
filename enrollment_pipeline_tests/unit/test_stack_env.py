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
    result = CliRunner().invoke(main, ["stack", "env"])
    assert "LEAD_API_ALLOW_HTTP" not in result.output
