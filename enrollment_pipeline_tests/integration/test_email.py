"""Email senders against a real SMTP server (aiosmtpd) and SES on moto's server."""

from __future__ import annotations

import boto3
import pytest

from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import (
    OutgoingEmail,
    PermanentEmailError,
    SesEmailSender,
    SmtpEmailSender,
    TransientEmailError,
)
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration


def test_smtp_email_is_received(smtp_server):
    inbox, port = smtp_server
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="followups@example.com")
    sender.send(OutgoingEmail("broker@example.com", "Signature needed: APP-1", "Please sign."))
    assert len(inbox.messages) == 1
    mail_from, rcpt, content = inbox.messages[0]
    assert (mail_from, rcpt) == ("followups@example.com", ["broker@example.com"])
    assert b"Subject: Signature needed: APP-1" in content
    assert b"Please sign." in content


def test_an_smtp_session_keeps_one_connection_and_reconnects_when_dropped(smtp_server):
    inbox, port = smtp_server
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="followups@example.com")
    with sender.session() as send:
        send(OutgoingEmail("a@example.com", "s", "b", html="<p>b</p>"))
        send(OutgoingEmail("b@example.com", "s", "b"))
        inbox.restart()  # the server drops the connection between two sends
        send(OutgoingEmail("c@example.com", "s", "b"))
    assert [rcpt for _, (rcpt,), _ in inbox.messages] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert inbox.peers[0] == inbox.peers[1] != inbox.peers[2]
    assert b"text/html" in inbox.messages[0][2]


def test_smtp_rejected_recipient_is_permanent(smtp_server):
    inbox, port = smtp_server
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="followups@example.com")
    with pytest.raises(PermanentEmailError):
        sender.send(OutgoingEmail("nobody@invalid.example", "s", "b"))
    assert inbox.messages == []


def test_smtp_server_down_is_transient():
    (port,) = free_ports(1)
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=2)
    with pytest.raises(TransientEmailError, match="SMTP_HOST"):
        sender.send(OutgoingEmail("broker@example.com", "s", "b"))


def test_ses_email_is_accepted_by_moto(moto_endpoint, aws_credentials):
    ses = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_endpoint)
    ses.create_email_identity(EmailIdentity="followups@example.com")
    quota = boto3.client("ses", region_name="us-east-1", endpoint_url=moto_endpoint)
    before = quota.get_send_quota()["SentLast24Hours"]
    sender = SesEmailSender(
        sender="followups@example.com",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )
    message_id = sender.send(OutgoingEmail("broker@example.com", "Signature needed", "Sign."))
    assert message_id
    assert quota.get_send_quota()["SentLast24Hours"] == before + 1


def test_ses_unverified_sender_is_rejected_permanently(moto_endpoint, aws_credentials):
    sender = SesEmailSender(
        sender="unverified@example.org",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )
    with pytest.raises(PermanentEmailError, match="MessageRejected"):
        sender.send(OutgoingEmail("broker@example.com", "s", "b"))
