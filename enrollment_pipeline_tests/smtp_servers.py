"""Real SMTP servers on loopback (aiosmtpd) that misbehave the way real ones do."""

from __future__ import annotations

import email
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy as email_policy
from email.utils import parsedate_to_datetime

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from enrollment_pipeline_tests.conftest import Inbox, free_ports


@contextmanager
def smtp_server(inbox: Inbox | None = None, **smtp_params) -> Iterator[tuple[Inbox, int]]:
    """`inbox` (an aiosmtpd handler) served on a free loopback port; `smtp_params` go to
    aiosmtpd's SMTP (e.g. `enable_SMTPUTF8=True`, `authenticator=...`)."""
    inbox = inbox or Inbox()
    (port,) = free_ports(1)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **smtp_params)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class SenderRefusingInbox(Inbox):
    """Answers 553 to MAIL FROM for any sender but `allowed`."""

    def __init__(self, allowed: str) -> None:
        super().__init__()
        self.allowed = allowed
        self.refused_senders: list[str] = []

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address != self.allowed:
            self.refused_senders.append(address)
            return "553 5.7.1 Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


class DroppingInbox(Inbox):
    """Receives the whole message for `drop_for`, then drops the connection instead of
    answering 250: the client cannot know whether the message was taken."""

    def __init__(self, drop_for: str) -> None:
        super().__init__()
        self.drop_for = drop_for

    async def handle_DATA(self, server, session, envelope):
        if self.drop_for in envelope.rcpt_tos:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            self.peers.append(session.peer)
            server.transport.abort()
            return "250 OK"  # never reaches the client
        return await super().handle_DATA(server, session, envelope)


def password_checker(username: str, password: str):
    """An aiosmtpd authenticator taking only `username`/`password` (plain AUTH on loopback)."""

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            username.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)  # handled=True would answer nothing

    return authenticate


def received_dates(inbox: Inbox) -> list:
    """The `Date:` of every received message, parsed (raises if one has none or a bad one)."""
    dates = []
    for _, _, raw in inbox.messages:
        message = email.message_from_bytes(raw, policy=email_policy.default)
        assert message["Date"] is not None, raw[:300]
        assert message["Message-ID"], raw[:300]
        dates.append(parsedate_to_datetime(str(message["Date"])))
    return dates
