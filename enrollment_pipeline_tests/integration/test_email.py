"""Email senders against a real SMTP server (aiosmtpd) and SES on moto's server."""

from __future__ import annotations

import dataclasses
import email
from datetime import UTC, datetime, timedelta
from email import policy as email_policy

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import (
    EmailServerError,
    InvalidAddressError,
    OutgoingEmail,
    PermanentEmailError,
    SesEmailSender,
    SmtpEmailSender,
    TransientEmailError,
    UnknownEmailOutcome,
)
from enrollment_pipeline_tests.conftest import free_ports
from enrollment_pipeline_tests.smtp_servers import (
    DroppingInbox,
    SenderRefusingInbox,
    password_checker,
    received_dates,
    smtp_server,
)

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
    (date,) = received_dates(inbox)
    assert abs(datetime.now(UTC) - date) < timedelta(minutes=1)  # the real time of sending


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


def test_ses_sends_the_raw_message_with_its_date(moto_endpoint, aws_credentials):
    ses = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_endpoint)
    ses.create_email_identity(EmailIdentity="followups@example.com")
    sent = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    before = len(sent)
    sender = SesEmailSender(
        sender="followups@example.com",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )

    sender.send(OutgoingEmail("broker@example.com", "Signature needed", "Sign.", to_name="Bo"))

    (raw,) = sent[before:]
    message = email.message_from_string(raw.raw_data, policy=email_policy.default)
    assert [a.addr_spec for a in message["To"].addresses] == ["broker@example.com"]
    date = email.utils.parsedate_to_datetime(str(message["Date"]))
    assert abs(datetime.now(UTC) - date) < timedelta(minutes=1)
    assert message["Message-ID"]


def test_ses_unverified_sender_is_a_setting_to_fix(moto_endpoint, aws_credentials):
    sender = SesEmailSender(
        sender="unverified@example.org",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )
    with pytest.raises(EmailServerError, match="EMAIL_FROM") as caught:
        sender.send(OutgoingEmail("broker@example.com", "s", "b"))
    assert caught.value.server_down


def test_ses_takes_no_non_ascii_address(moto_endpoint, aws_credentials):
    sender = SesEmailSender(
        sender="followups@example.com",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )
    with sender.session() as session, pytest.raises(InvalidAddressError):
        session.prepare(OutgoingEmail("jürgen@example.test", "s", "b"))


def test_ses_unreachable_names_the_endpoint_settings(aws_credentials):
    (port,) = free_ports(1)
    sender = SesEmailSender(
        sender="followups@example.com",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}"),
    )
    with pytest.raises(EmailServerError, match="AWS_ENDPOINT_URL"):
        sender.send(OutgoingEmail("broker@example.com", "s", "b"))


def test_smtp_refused_login_names_the_settings_and_not_the_password():
    checker = password_checker("followups", "right-password")
    with smtp_server(authenticator=checker, auth_require_tls=False) as (inbox, port):
        sender = SmtpEmailSender(
            host="127.0.0.1",
            port=port,
            sender="followups@example.com",
            username="followups",
            password="wrong-password",
        )
        with pytest.raises(EmailServerError, match="SMTP_USERNAME and SMTP_PASSWORD") as caught:
            sender.send(OutgoingEmail("broker@example.com", "s", "b"))
        assert "535" in str(caught.value)
        assert "wrong-password" not in str(caught.value)
        assert inbox.messages == []

        fixed = dataclasses.replace(sender, password="right-password")
        fixed.send(OutgoingEmail("broker@example.com", "s", "b"))
        assert len(inbox.messages) == 1


def test_smtp_refused_sender_names_email_from():
    with smtp_server(SenderRefusingInbox(allowed="followups@example.com")) as (inbox, port):
        sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="typo@example.com")
        with pytest.raises(EmailServerError, match="EMAIL_FROM") as caught:
            sender.send(OutgoingEmail("broker@example.com", "s", "b"))
        assert "553" in str(caught.value)
        assert inbox.messages == []


def test_smtp_connection_lost_after_the_message_is_unknown_and_not_sent_again():
    with smtp_server(DroppingInbox(drop_for="ada@brokers.example")) as (inbox, port):
        sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=5)
        with sender.session() as send:
            with pytest.raises(UnknownEmailOutcome, match="may have been delivered"):
                send(OutgoingEmail("ada@brokers.example", "s", "b"))
            send(OutgoingEmail("bo@brokers.example", "s", "b"))  # a new connection, one send
    assert [rcpt for _, (rcpt,), _ in inbox.messages] == [
        "ada@brokers.example",
        "bo@brokers.example",
    ]


@pytest.mark.parametrize(("smtputf8", "delivered"), [(False, False), (True, True)])
def test_a_non_ascii_address_goes_only_to_a_server_with_smtputf8(smtputf8, delivered):
    with smtp_server(enable_SMTPUTF8=smtputf8) as (inbox, port):
        sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=5)
        with sender.session() as send:
            try:
                send(OutgoingEmail("jürgen@exämple.test", "s", "Grüße", to_name="Jürgen"))
            except InvalidAddressError:
                assert not delivered
            send(OutgoingEmail("ada@brokers.example", "s", "b"))  # the session goes on
    rcpts = [rcpt for _, (rcpt,), _ in inbox.messages]
    assert rcpts == (["jürgen@exämple.test"] if delivered else []) + ["ada@brokers.example"]
    if delivered:
        assert "To: Jürgen <jürgen@exämple.test>".encode() in inbox.messages[0][2]
