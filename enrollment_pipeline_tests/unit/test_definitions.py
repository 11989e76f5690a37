"""The code location loads, with the resources the environment asks for."""

from __future__ import annotations

import dagster as dg

from enrollment_pipeline.definitions import defs
from enrollment_pipeline.defs.email.resources import SesEmailResource, SmtpEmailResource


def build_resources() -> dict:
    """The resources the code location binds, from the environment as it is now."""
    return dict(defs().resources or {})


def test_definitions_load_with_every_resource():
    loaded = defs()
    assert isinstance(loaded, dg.Definitions)
    assert set(loaded.resources or {}) >= {"kafka", "mongo", "email", "archive", "crm", "settings"}
    repository = loaded.get_repository_def()
    for job in (  # Contract 6 names
        "ingest_enrollment_events",
        "send_broker_followups",
        "deliver_leads",
        "backfill_enrollment_history",
        "rebuild_read_model",
        "erase_applicant",
    ):
        assert repository.has_job(job), job
    assert dg.AssetCheckKey(dg.AssetKey("applications"), "read_model_drift") in (
        repository.asset_graph.asset_check_keys
    )
    assert repository.has_sensor_def("enrollment_events_sensor")
    assert repository.has_sensor_def("lead_events_sensor")
    assert repository.has_schedule_def("hourly_broker_followups")
    backfill = loaded.resolve_assets_def("historic_enrollment_events")
    assert backfill.backfill_policy == dg.BackfillPolicy.single_run()
    assert backfill.partitions_def.get_first_partition_key() == "2024-01-01"  # ARCHIVE_START_DATE
    assert loaded.resolve_assets_def("broker_followup_emails").dependency_keys == {
        dg.AssetKey("broker_followups")
    }


def test_environment_configures_the_resources(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("MONGO_DATABASE", "enrollment_prod")
    monkeypatch.setenv("SMTP_PORT", "2525")
    resources = build_resources()
    assert resources["kafka"].bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert resources["mongo"].database == "enrollment_prod"
    assert isinstance(resources["email"], SmtpEmailResource)
    assert resources["email"].port == 2525


def test_ses_backend_is_chosen_by_email_backend(monkeypatch):
    monkeypatch.setenv("EMAIL_BACKEND", "ses")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    email = build_resources()["email"]
    assert isinstance(email, SesEmailResource)
    assert email.endpoint_url == "http://127.0.0.1:5000"


def test_secrets_are_environment_references_not_values(monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("LEAD_API_TOKEN", "tok-123")
    monkeypatch.setenv("MONGO_URI", "mongodb://app:pw@db:27017/")
    resources = build_resources()
    assert resources["email"].password == dg.EnvVar("SMTP_PASSWORD")
    assert resources["crm"].token == dg.EnvVar("LEAD_API_TOKEN")
    assert resources["mongo"].uri == dg.EnvVar("MONGO_URI")
    rendered = repr(resources)
    assert "hunter2" not in rendered and "tok-123" not in rendered and "pw@" not in rendered
