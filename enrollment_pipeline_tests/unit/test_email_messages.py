"""The email message as it goes out: one checked mailbox, a Date and a Message-ID; and the SES
client that sends it makes one attempt only."""

from __future__ import annotations

import email
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy as email_policy
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import (
    EmailServerError,
    InvalidAddressError,
    OutgoingEmail,
    SesEmailSender,
    UnknownEmailOutcome,
    build_message,
    check_mailbox,
)

NOW = datetime(2026, 11, 2, 9, 0, 7, tzinfo=UTC)
SENDER = "Follow-ups <followups@example.com>"


def mail(to: str, name: str | None = "Ada Broker") -> OutgoingEmail:
    return OutgoingEmail(
        to, "Signature needed: APP-1", "Please sign.\n", "<p>Please sign.</p>", name
    )


@pytest.mark.parametrize(
    "address",
    [
        "a,b@example.test",  # a comma-separated pair, as typed into a form
        "a@example.test, b@example.test",
        "a;b@example.test",
        '"a@example.test',
        '"a b"@example.test',
        "a(comment)@example.test",
        "<a@example.test>",
        "a@example.test>",
        "a@[127.0.0.1]",
        "a@b@example.test",
        "a..b@example.test",
        ".a@example.test",
        "a.@example.test",
        "a@example..test",
        "a@-example.test",
        "a@example",
        "@example.test",
        "a@",
        "a b@example.test",
        "a@example.test\r\nBcc: victim@example.test",
        "=?utf-8?q?x?=@example.test",
        "a\u200b@example.test",  # zero-width space
        "x" * 65 + "@example.test",
    ],
)
def test_anything_but_one_plain_mailbox_is_an_invalid_address(address):
    with pytest.raises(InvalidAddressError) as caught:
        check_mailbox(address)
    assert address not in str(caught.value)  # the error text carries no personal data


@pytest.mark.parametrize(
    "address",
    [
        "ada@brokers.example",
        "ada.lovelace+followups@brokers.example.com",
        "o'brien@example.test",
        "jürgen@example.test",
        "x@exämple.test",
    ],
)
def test_plain_mailboxes_pass(address):
    assert check_mailbox(address) == address


def test_the_message_has_a_date_a_message_id_and_exactly_one_recipient():
    prepared = build_message(SENDER, mail("ada@brokers.example"), now=NOW, smtputf8=False)

    assert (prepared.envelope_from, prepared.envelope_to) == (
        "followups@example.com",
        "ada@brokers.example",
    )
    message = email.message_from_bytes(prepared.data, policy=email_policy.default)
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert message["Date"].endswith("+0000")
    assert message["Message-ID"] == prepared.message_id
    assert prepared.message_id.endswith("@example.com>")
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@brokers.example"]
    assert message["To"].addresses[0].display_name == "Ada Broker"
    assert message.get_body(("html",)) is not None
    assert prepared.data.isascii()


def test_a_non_ascii_address_needs_smtputf8():
    with pytest.raises(InvalidAddressError, match="SMTPUTF8"):
        build_message(SENDER, mail("jürgen@example.test"), now=NOW, smtputf8=False)

    prepared = build_message(SENDER, mail("jürgen@example.test", "Jürgen"), now=NOW, smtputf8=True)

    assert prepared.smtputf8
    assert "To: Jürgen <jürgen@example.test>".encode() in prepared.data


def test_a_non_ascii_broker_name_needs_no_smtputf8():
    prepared = build_message(
        SENDER, mail("ada@brokers.example", "Jürgen Müller"), now=NOW, smtputf8=False
    )
    assert not prepared.smtputf8 and prepared.data.isascii()
    message = email.message_from_bytes(prepared.data, policy=email_policy.default)
    assert message["To"].addresses[0].display_name == "Jürgen Müller"


_ONE_LINE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=120
).filter(lambda text: text.strip() == text and text.strip())
_BODY = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=3000
).map(lambda text: text + "\n")


@settings(max_examples=200, deadline=None)
@given(name=_ONE_LINE, subject=_ONE_LINE, text=_BODY, html=st.one_of(st.none(), _BODY))
def test_a_message_reads_back_as_what_was_sent(name, subject, text, html):
    """Any display name, subject and bodies (non-ASCII, quotes, commas, lines of 3,000
    characters, lines that start with a dot) reach a reader unchanged, in 7-bit lines within
    RFC 5322's 998 characters, with exactly the one recipient."""
    outgoing = OutgoingEmail("ada@brokers.example", subject, text, html, name)
    prepared = build_message(SENDER, outgoing, now=NOW, smtputf8=False)

    assert prepared.data.isascii()
    assert max(len(line) for line in prepared.data.split(b"\r\n")) <= 998
    message = email.message_from_bytes(prepared.data, policy=email_policy.default)
    (to,) = message["To"].addresses
    assert (to.addr_spec, to.display_name) == ("ada@brokers.example", name)
    assert message["Subject"] == subject
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    if html is None:
        assert not message.is_multipart()
    else:
        assert message.get_body(("html",)).get_content().replace("\r\n", "\n") == html


@pytest.mark.parametrize("sender", ["not-an-address", "a@example.test, b@example.test", ""])
def test_a_bad_email_from_is_a_setting_to_fix_not_an_invalid_recipient(sender):
    with pytest.raises(EmailServerError, match="EMAIL_FROM"):
        build_message(sender, mail("ada@brokers.example"), now=NOW, smtputf8=False)


# -- SES: one attempt per SendEmail ----------------------------------------------------------


class _Stalling(BaseHTTPRequestHandler):
    """Reads a request, counts it and never answers (until the test ends)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(self.path)
        self.server.release.wait(30)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stalling_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    server.requests, server.release = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_ses_sendemail_is_never_retried(stalling_server, aws_credentials):
    host, port = stalling_server.server_address
    sender = SesEmailSender(
        sender="followups@example.com",
        read_timeout_s=0.5,
        aws=AwsConfig(region_name="us-east-1", endpoint_url=f"http://{host}:{port}"),
    )
    assert sender.client().meta.config.retries["total_max_attempts"] == 1

    with pytest.raises(UnknownEmailOutcome, match="never sent again"):
        sender.send(mail("ada@brokers.example"))

    # With the shared boto3 settings (standard retries) the same email went out 6 times.
    assert len(stalling_server.requests) == 1
