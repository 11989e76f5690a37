"""Real SMTP servers on loopback (aiosmtpd) that misbehave the way real ones do."""

from __future__ import annotations

import email
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy as email_policy
from email.utils import parsedate_to_datetime

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from enrollment_pipeline_tests.conftest import Inbox, free_ports


class CountingInbox(Inbox):
    """Also counts the client connections open at once (aiosmtpd sessions; the controller's
    own check when it starts is one) and keeps when each message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []  # time.monotonic() of each message
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)

    def closed(self) -> None:
        with self._lock:
            self.open -= 1

    async def handle_DATA(self, server, session, envelope):
        self.arrivals.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)


class _CountingSMTP(SMTP):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.event_handler.opened()

    def connection_lost(self, error) -> None:
        self.event_handler.closed()
        super().connection_lost(error)


class _CountingController(Controller):
    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def smtp_server(inbox: Inbox | None = None, **smtp_params) -> Iterator[tuple[Inbox, int]]:
    """`inbox` (an aiosmtpd handler) served on a free loopback port; `smtp_params` go to
    aiosmtpd's SMTP (e.g. `enable_SMTPUTF8=True`, `authenticator=...`). A `CountingInbox`
    is told of each connection opened and closed."""
    inbox = inbox or Inbox()
    (port,) = free_ports(1)
    controller_class = _CountingController if isinstance(inbox, CountingInbox) else Controller
    controller = controller_class(inbox, hostname="127.0.0.1", port=port, **smtp_params)
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
