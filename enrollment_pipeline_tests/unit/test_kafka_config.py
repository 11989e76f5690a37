"""The Kafka client checks its security settings before it connects (one line, at once)."""

from __future__ import annotations

import time

import pytest

from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig, KafkaConfigError
from enrollment_pipeline_tests.conftest import free_ports


def config(tmp_path=None, **fields) -> KafkaConfig:
    (port,) = free_ports(1)  # nothing listens: a connection attempt would wait for the timeout
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", **fields)


def test_plaintext_without_security_settings_is_complete():
    assert config().problems() == []


def test_sasl_without_mechanism_user_and_password_names_each_missing_variable():
    problems = config(security_protocol="SASL_SSL").problems()
    assert problems == [
        "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME "
        "and KAFKA_SASL_PASSWORD"
    ]
    only_password = config(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username="u"
    ).problems()
    assert only_password == ["KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_PASSWORD"]


def test_an_unknown_mechanism_and_credentials_that_would_not_be_used_are_named():
    (problem,) = config(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM", sasl_username="u", sasl_password="p"
    ).problems()
    assert problem.startswith("KAFKA_SASL_MECHANISM=SCRAM is not one of PLAIN, SCRAM-SHA-256")
    (problem,) = config(sasl_username="u", sasl_password="p").problems()
    assert "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD set, but" in problem
    assert "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not log in" in problem


def test_a_ca_file_that_is_not_there_or_not_used_is_named(tmp_path):
    missing = tmp_path / "ca.pem"
    (problem,) = config(security_protocol="SSL", ssl_cafile=str(missing)).problems()
    assert problem == f"KAFKA_SSL_CAFILE={missing} is not a file"
    missing.write_text("-----BEGIN CERTIFICATE-----\n")
    assert config(security_protocol="SSL", ssl_cafile=str(missing)).problems() == []
    (problem,) = config(ssl_cafile=str(missing)).problems()
    assert "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS" in problem


def test_the_client_refuses_an_incomplete_config_at_once_in_one_line_without_the_secret():
    client = KafkaClient(config(security_protocol="SASL_SSL", sasl_password="s3cret-pw"))
    started = time.monotonic()
    with pytest.raises(KafkaConfigError) as raised:
        client.end_offsets("enrollment-events")
    assert time.monotonic() - started < 1  # no connection attempted, no bootstrap timeout
    message = str(raised.value)
    assert "\n" not in message and "s3cret-pw" not in message
    assert "KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME" in message
    with pytest.raises(KafkaConfigError):
        client.produce_batch("enrollment-events", [(b"k", b"v")])
    with pytest.raises(KafkaConfigError), client.admin():
        pass
