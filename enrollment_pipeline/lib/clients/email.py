"""Email senders: SMTP (smtplib) and AWS SES (boto3 `sesv2` on dagster-aws's boto3 settings).

Both raise the same two errors so the follow-up job can apply Contract 3 without knowing the
backend: `TransientEmailError` (try again next run, not counted as sent) and
`PermanentEmailError` (recipient rejected or invalid: the follow-up goes PENDING).
"""

from __future__ import annotations

import smtplib
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage as MimeMessage
from email.utils import make_msgid

from botocore.exceptions import BotoCoreError, ClientError

from enrollment_pipeline.lib.clients.aws import AwsConfig, boto3_client
from enrollment_pipeline.settings import EmailSettings


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    subject: str
    body: str
    html: str | None = None
    to_name: str | None = None


class TransientEmailError(RuntimeError):
    """The send may succeed later (server down, throttled, 4xx)."""

    def __init__(self, message: str, *, server_down: bool = False) -> None:
        super().__init__(message)
        # The backend itself is unreachable: no use trying the other recipients now.
        self.server_down = server_down


class PermanentEmailError(RuntimeError):
    """The recipient will never accept this message (5xx recipient error, invalid address)."""


class EmailSender(ABC):
    """What the follow-up job needs of an email backend."""

    @abstractmethod
    def send(self, email: OutgoingEmail) -> str:
        """Send one email; return the backend's message id."""

    @contextmanager
    def session(self) -> Iterator[Callable[[OutgoingEmail], str]]:
        """A `send` for many emails in a row (one connection where the backend has one)."""
        yield self.send


def _mime(sender: str, email: OutgoingEmail) -> MimeMessage:
    """The message with plain text and, when given, HTML; header values are one line each."""
    message = MimeMessage()
    message["From"] = sender
    message["To"] = (
        str(Address(display_name=email.to_name, addr_spec=email.to)) if email.to_name else email.to
    )
    message["Subject"] = email.subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(email.body)
    if email.html:
        message.add_alternative(email.html, subtype="html")
    return message


@dataclass(frozen=True)
class SmtpEmailSender(EmailSender):
    """SMTP (SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD, SMTP_STARTTLS, SMTP_SSL,
    EMAIL_FROM); `use_ssl` is TLS from the first byte (port 465)."""

    host: str
    sender: str
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    use_ssl: bool = False
    timeout_s: float = 10.0

    def send(self, email: OutgoingEmail) -> str:
        with self.session() as send:
            return send(email)

    @contextmanager
    def session(self) -> Iterator[Callable[[OutgoingEmail], str]]:
        """One connection for the whole run, opened on first use, reopened once if dropped."""
        connection: list[smtplib.SMTP] = []

        def send(email: OutgoingEmail) -> str:
            message = _mime(self.sender, email)
            for retry in (False, True):
                reused = bool(connection)
                try:
                    if not connection:
                        connection.append(self._connect())
                    connection[0].send_message(message)
                    return str(message["Message-ID"])
                except (
                    smtplib.SMTPServerDisconnected,
                    ConnectionResetError,
                    BrokenPipeError,
                ) as exc:
                    connection.clear()
                    if retry or not reused:
                        raise self._transient(exc) from exc
                    # The server dropped the idle connection: open a new one, once.
                except Exception as exc:
                    if isinstance(exc, (OSError, smtplib.SMTPConnectError)):
                        connection.clear()
                    raise self._classified(exc) from exc
            raise AssertionError("unreachable")

        try:
            yield send
        finally:
            if connection:
                try:
                    connection[0].quit()
                except (smtplib.SMTPException, OSError):
                    connection[0].close()

    def _connect(self) -> smtplib.SMTP:
        if self.use_ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
        if self.username:
            smtp.login(self.username, self.password or "")
        return smtp

    def _transient(self, exc: BaseException) -> TransientEmailError:
        return TransientEmailError(
            f"SMTP server {self.host}:{self.port} unavailable ({type(exc).__name__}); "
            "check SMTP_HOST and SMTP_PORT",
            server_down=True,
        )

    def _classified(self, exc: BaseException) -> Exception:
        """Contract 3's two kinds of failure, from what smtplib raised."""
        try:
            raise exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(500 <= code < 600 for code in codes):
                return PermanentEmailError(f"recipient refused: {codes}")
            return TransientEmailError(f"recipient deferred: {codes}")
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code in (550, 551, 553) and not isinstance(exc, smtplib.SMTPSenderRefused):
                return PermanentEmailError(f"SMTP {exc.smtp_code}")
            return TransientEmailError(f"SMTP {exc.smtp_code}")
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            return self._transient(exc)


# SES error codes that will not change on retry.
_SES_PERMANENT = {"MessageRejected", "BadRequestException", "InvalidParameterValue"}


@dataclass(frozen=True)
class SesEmailSender(EmailSender):
    """AWS SES v2 (AWS_REGION, AWS_ENDPOINT_URL, EMAIL_FROM a verified identity); credentials
    from the environment."""

    sender: str
    aws: AwsConfig = field(default_factory=AwsConfig)

    def _client(self):
        return boto3_client(self.aws, "sesv2", connect_timeout=5, read_timeout=15)

    def send(self, email: OutgoingEmail) -> str:
        return self._send(self._client(), email)

    @contextmanager
    def session(self) -> Iterator[Callable[[OutgoingEmail], str]]:
        client = self._client()
        yield lambda email: self._send(client, email)

    def _send(self, client, email: OutgoingEmail) -> str:
        body = {"Text": {"Data": email.body, "Charset": "UTF-8"}}
        if email.html:
            body["Html"] = {"Data": email.html, "Charset": "UTF-8"}
        to = (
            str(Address(display_name=email.to_name, addr_spec=email.to))
            if email.to_name
            else email.to
        )
        try:
            response = client.send_email(
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [to]},
                Content={
                    "Simple": {
                        "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                        "Body": body,
                    }
                },
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _SES_PERMANENT:
                raise PermanentEmailError(f"SES {code}") from exc
            raise TransientEmailError(f"SES {code}") from exc
        except BotoCoreError as exc:
            raise TransientEmailError(
                f"SES unreachable ({type(exc).__name__}); check AWS_REGION and AWS_ENDPOINT_URL",
                server_down=True,
            ) from exc
        return response["MessageId"]


def email_sender(settings: EmailSettings) -> EmailSender:
    """The sender EMAIL_BACKEND names, from the environment's variables (the one mapping)."""
    if settings.email_backend == "ses":
        return SesEmailSender(sender=settings.email_from, aws=AwsConfig.from_settings(settings))
    password = settings.smtp_password
    return SmtpEmailSender(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=password.get_secret_value() if password else None,
        starttls=settings.smtp_starttls,
        use_ssl=settings.smtp_ssl,
        sender=settings.email_from,
    )
