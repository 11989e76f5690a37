"""Email senders: SMTP (smtplib) and AWS SES (boto3 `sesv2`), plain clients.

A run opens one `session()` and sends each email in two steps, so the follow-up job can keep
Contract 3's exactly-once order (claim → send_started_at → send → outcome):

- `prepare(email)` builds and checks the message (one mailbox, a server that can take it)
  and makes sure the server is there. Nothing has left yet; it runs before
  `send_started_at` is written.
- `deliver(prepared)` hands the prepared bytes to the server.

Both backends raise the same errors, so the job applies Contract 3 without knowing which one
it talks to:

- `InvalidAddressError` (a `PermanentEmailError`): the message cannot be built, or this
  server cannot take the address (a list, quotes, a non-ASCII address without SMTPUTF8).
- `PermanentEmailError`: the server refused this recipient or message for good.
- `TransientEmailError`: not sent, this message may go later (4xx for this recipient,
  throttling).
- `EmailServerError` (a `TransientEmailError` with `server_down`): not sent, and no other
  message will go either: the server is unreachable, or refuses our login or sender. Its
  text names the setting to fix and never holds a secret.
- `UnknownEmailOutcome`: the message may have reached the server (the connection was lost
  after its content went out, SES timed out reading the answer). Never send it again.
"""

from __future__ import annotations

import functools
import re
import smtplib
import ssl
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import policy as email_policy
from email.charset import QP, Charset
from email.errors import MessageError, NonASCIILocalPartDefect
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage as MimeMessage
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from email.parser import HeaderParser
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from enrollment_pipeline.lib.clients.aws import AwsConfig, boto3_client
from enrollment_pipeline.settings import EmailSettings


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    subject: str
    body: str
    html: str | None = None
    to_name: str | None = None


class EmailError(RuntimeError):
    """Any failure of an email backend."""


class TransientEmailError(EmailError):
    """Not sent; the send may succeed later (4xx, throttled, server down)."""

    def __init__(self, message: str, *, server_down: bool = False) -> None:
        super().__init__(message)
        # The backend itself is unusable: no use trying the other recipients now.
        self.server_down = server_down


class EmailServerError(TransientEmailError):
    """Not sent, and nothing else will be: the server or its settings are at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, server_down=True)


class PermanentEmailError(EmailError):
    """The recipient will never accept this message (5xx recipient error, invalid address)."""


class InvalidAddressError(PermanentEmailError):
    """The message cannot be built, or the server cannot take the address: nothing was sent."""


class UnknownEmailOutcome(EmailError):
    """The message may have been delivered: count it as sent and never send it again."""


@dataclass(frozen=True)
class PreparedEmail:
    """One message as it will go out: built, checked, serialized."""

    envelope_from: str
    envelope_to: str
    data: bytes
    message_id: str
    smtputf8: bool = False


class EmailSession(ABC):
    """One backend connection (where it has one) for many emails in a row."""

    @abstractmethod
    def prepare(self, email: OutgoingEmail) -> PreparedEmail:
        """Build and check the message; nothing is sent (raises `InvalidAddressError`,
        `EmailServerError`)."""

    @abstractmethod
    def deliver(self, prepared: PreparedEmail) -> str:
        """Send a prepared message; return the backend's message id."""

    def __call__(self, email: OutgoingEmail) -> str:
        return self.deliver(self.prepare(email))


class EmailSender(ABC):
    """What the follow-up job needs of an email backend."""

    @abstractmethod
    def session(self) -> AbstractContextManager[EmailSession]:
        """An `EmailSession` for a run (also callable with an `OutgoingEmail`)."""

    def send(self, email: OutgoingEmail) -> str:
        """Send one email; return the backend's message id."""
        with self.session() as session:
            return session(email)


# -- addresses ---------------------------------------------------------------------------------

# RFC 5322 atext: what a dot-atom local part may hold (no quotes, commas, brackets, spaces).
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _local_part_ok(local: str) -> bool:
    """A dot-atom; non-ASCII letters allowed (RFC 6532), no control, format or space chars."""
    if not local or len(local.encode("utf-8")) > 64:
        return False
    for atom in local.split("."):
        if not atom:
            return False
        for char in atom:
            if char in _ATEXT:
                continue
            if char.isascii() or unicodedata.category(char)[0] in "CZ":
                return False
    return True


def _domain_ok(domain: str) -> bool:
    """Host name labels (letters, digits, inner hyphens), IDNA for non-ASCII; at least a dot."""
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    ascii_labels = []
    for label in labels:
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                return False
        if not _LABEL.fullmatch(label):
            return False
        ascii_labels.append(label)
    return len(".".join(ascii_labels)) <= 253


def check_mailbox(address: str) -> str:
    """`address` when it is exactly one plain mailbox (`local@domain`), else
    `InvalidAddressError`. Stricter than RFC 5322 on purpose: no lists, quoted or commented
    local parts, address literals or display names. The error's text never holds the address
    (it is personal data)."""
    if not isinstance(address, str) or not address:
        raise InvalidAddressError("no address")
    if any(sep in address for sep in ",;"):
        raise InvalidAddressError("a list of addresses, not one mailbox")
    if any(char in address for char in '"()<>[]\\'):
        raise InvalidAddressError("quotes, comments or brackets in the address")
    if any(char.isspace() or unicodedata.category(char)[0] == "C" for char in address):
        raise InvalidAddressError("spaces or control characters in the address")
    local, at, domain = address.rpartition("@")
    if not at or "@" in local:
        raise InvalidAddressError("not one local@domain address")
    if not _local_part_ok(local):
        raise InvalidAddressError("the local part is not a valid dot-atom")
    if not _domain_ok(domain):
        raise InvalidAddressError("the domain is not a valid host name")
    if address.isascii():
        # The mail library must read it back as the very same single mailbox.
        try:
            parsed = Address(addr_spec=address)
        except (ValueError, MessageError, IndexError) as exc:
            raise InvalidAddressError(
                f"refused by the mail library ({type(exc).__name__})"
            ) from None
        if parsed.addr_spec != address:
            raise InvalidAddressError("the mail library reads another address")
    return address


@functools.lru_cache(maxsize=16)
def _sender_mailbox(sender: str) -> Address:
    """EMAIL_FROM (`addr` or `Name <addr>`) as one mailbox, or an `EmailServerError`
    (the same for every message of a run: parsed once)."""
    try:
        header = email_policy.default.header_factory("From", sender)
        (address,) = header.addresses
        if header.defects:
            raise ValueError("defects")
        check_mailbox(address.addr_spec)
    except (ValueError, MessageError, IndexError, InvalidAddressError):
        raise EmailServerError(
            "EMAIL_FROM is not one valid address (`addr` or `Name <addr>`): fix EMAIL_FROM"
        ) from None
    mailbox: Address = address
    return mailbox


def build_message(
    sender: str, email: OutgoingEmail, *, now: datetime, smtputf8: bool
) -> PreparedEmail:
    """The message with plain text and, when given, HTML, a `Date:` and a `Message-ID`;
    header values are one line each. `smtputf8`: the server takes non-ASCII addresses.

    Raises `InvalidAddressError` (the recipient, or a message that cannot be built) or
    `EmailServerError` (EMAIL_FROM)."""
    from_address = _sender_mailbox(sender)
    to = check_mailbox(email.to)
    if not from_address.addr_spec.isascii() and not smtputf8:
        raise EmailServerError(
            "EMAIL_FROM is not ASCII and the server does not offer SMTPUTF8: fix EMAIL_FROM"
        )
    utf8 = not (to.isascii() and from_address.addr_spec.isascii())
    if utf8 and not smtputf8:
        raise InvalidAddressError(
            "a non-ASCII address, which this server cannot take (no SMTPUTF8)"
        )
    msgid_domain = from_address.domain.encode("idna").decode("ascii")
    if not utf8:
        return _ascii_envelope_message(from_address, to, email, now=now, msgid_domain=msgid_domain)
    # Non-ASCII addresses (SMTPUTF8): the modern API, which writes UTF-8 headers.
    local, _, domain = to.rpartition("@")
    # Built with 7-bit bodies (quoted-printable for non-ASCII text): no 8BITMIME needed.
    message = MimeMessage(policy=email_policy.SMTP.clone(cte_type="7bit"))
    try:
        message["From"] = sender
        message["To"] = Address(display_name=email.to_name or "", username=local, domain=domain)
        message["Subject"] = email.subject
        message["Date"] = format_datetime(now.astimezone(UTC))
        message["Message-ID"] = make_msgid(domain=msgid_domain)
        message.set_content(email.body)
        if email.html:
            message.add_alternative(email.html, subtype="html")
        data = message.as_bytes(policy=email_policy.SMTPUTF8)
    except (ValueError, TypeError, LookupError, MessageError) as exc:
        raise InvalidAddressError(f"the message cannot be built ({type(exc).__name__})") from None
    # Read the To header back as a receiver would: it must be exactly that one mailbox (the
    # headers only: parsing the MIME parts too tripled the cost of a message).
    header = HeaderParser(policy=email_policy.default).parsestr(data.decode("utf-8"))["To"]
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects or [a.addr_spec for a in header.addresses] != [to]:
        raise InvalidAddressError("the To header does not read back as that one mailbox")
    return PreparedEmail(
        envelope_from=from_address.addr_spec,
        envelope_to=to,
        data=data,
        message_id=str(message["Message-ID"]),
        smtputf8=True,
    )


# Bodies go as 7-bit: plain when ASCII in short lines, else quoted-printable UTF-8.
_QUOTED_PRINTABLE_UTF8 = Charset("utf-8")
_QUOTED_PRINTABLE_UTF8.body_encoding = QP
_WIRE = email_policy.compat32.clone(linesep="\r\n")
_MAX_PLAIN_LINE = 998  # RFC 5322's limit, CRLF excluded


def _text_part(body: str, subtype: str) -> MIMENonMultipart:
    if body.isascii() and all(len(line) <= _MAX_PLAIN_LINE for line in body.splitlines()):
        return MIMEText(body, subtype, "us-ascii")
    part = MIMENonMultipart("text", subtype, policy=_WIRE)
    part.set_payload(body, _QUOTED_PRINTABLE_UTF8)
    return part


def _ascii_envelope_message(
    from_address: Address, to: str, email: OutgoingEmail, *, now: datetime, msgid_domain: str
) -> PreparedEmail:
    """`build_message` for ASCII addresses (nearly every message), with the mail library's
    classic API: a third of the CPU of its modern one, whose header objects cost about 3 ms a
    message. Display names and subjects that are not ASCII are RFC 2047 encoded words."""
    texts = (email.to_name or "", email.subject, from_address.display_name)
    if any(char in text for text in texts for char in "\r\n"):
        raise InvalidAddressError("the message cannot be built (a line break in a header)")
    try:
        message: MIMENonMultipart | MIMEMultipart
        if email.html:
            message = MIMEMultipart("alternative", policy=_WIRE)
            message.attach(_text_part(email.body, "plain"))
            message.attach(_text_part(email.html, "html"))
        else:
            message = _text_part(email.body, "plain")
        from_header = formataddr((from_address.display_name, from_address.addr_spec), "utf-8")
        to_header = formataddr((email.to_name or "", to), "utf-8")
        message["From"] = from_header
        message["To"] = to_header
        if email.subject.isascii():
            message["Subject"] = email.subject
        else:
            # RFC 2047 encoded words (the classic API takes a Header; typeshed says str).
            message["Subject"] = Header(email.subject, "utf-8")  # type: ignore[assignment]
        message["Date"] = format_datetime(now.astimezone(UTC))
        message_id = make_msgid(domain=msgid_domain)
        message["Message-ID"] = message_id
        data = message.as_bytes(policy=_WIRE)
    except (ValueError, TypeError, LookupError, MessageError) as exc:
        raise InvalidAddressError(f"the message cannot be built ({type(exc).__name__})") from None
    # The To header as a receiver reads it: exactly that one mailbox.
    back = email_policy.default.header_factory("To", to_header)
    if back.defects or [a.addr_spec for a in back.addresses] != [to]:
        raise InvalidAddressError("the To header does not read back as that one mailbox")
    return PreparedEmail(
        envelope_from=from_address.addr_spec, envelope_to=to, data=data, message_id=message_id
    )


# -- SMTP --------------------------------------------------------------------------------------

# Nothing of the message has left: the connection can be dropped and the message sent later.
_LOST = (smtplib.SMTPServerDisconnected, OSError)


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

    @contextmanager
    def session(self) -> Iterator[EmailSession]:
        """One connection for the whole run, opened on first use; reopened only when the
        server dropped it while idle (found by RSET before MAIL FROM), never once a message
        may have gone out."""
        session = _SmtpSession(self)
        try:
            yield session
        finally:
            session.close()

    def connect(self) -> smtplib.SMTP:
        """A connection past EHLO, STARTTLS and login, or an `EmailServerError` naming the
        setting to fix (never the password)."""
        where = f"SMTP server {self.host}:{self.port}"
        smtp: smtplib.SMTP | None = None
        step = "connect"
        try:
            if self.use_ssl:
                smtp = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    timeout=self.timeout_s,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            smtp.ehlo()
            if self.starttls:
                step = "starttls"
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                step = "login"
                smtp.login(self.username, self.password or "")
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            message = (
                f"{where} refused the login ({exc.smtp_code}): check SMTP_USERNAME and "
                "SMTP_PASSWORD"
            )
        except smtplib.SMTPNotSupportedError:
            message = (
                f"{where} does not offer STARTTLS: check SMTP_STARTTLS and SMTP_SSL"
                if step == "starttls"
                else f"{where} offers no login (AUTH): check SMTP_USERNAME (unset for a server "
                "without login) and SMTP_STARTTLS (many offer AUTH only after STARTTLS)"
            )
        except smtplib.SMTPConnectError as exc:
            message = (
                f"{where} refused the connection ({exc.smtp_code}): check SMTP_HOST and SMTP_PORT"
            )
        except ssl.SSLError as exc:
            message = (
                f"TLS with {where} failed ({type(exc).__name__}): check SMTP_SSL, SMTP_STARTTLS "
                "and SMTP_HOST (the certificate's name)"
            )
        except (smtplib.SMTPException, OSError) as exc:
            message = f"{where} unavailable ({type(exc).__name__}): check SMTP_HOST and SMTP_PORT"
        if smtp is not None:
            smtp.close()
        raise EmailServerError(message)


class _SmtpSession(EmailSession):
    def __init__(self, backend: SmtpEmailSender) -> None:
        self.backend = backend
        self.smtp: smtplib.SMTP | None = None
        # Known to be alive with no transaction since: just opened, or answered RSET.
        self.checked = False

    @property
    def where(self) -> str:
        return f"SMTP server {self.backend.host}:{self.backend.port}"

    def _ready(self) -> smtplib.SMTP:
        """The connection, checked with RSET after a transaction; a dead idle one is
        replaced (no byte of the next message has been sent on it)."""
        if self.smtp is not None and not self.checked:
            try:
                code, _ = self.smtp.rset()
                alive = code == 250
            except _LOST:
                alive = False
            if not alive:
                self._drop()
        if self.smtp is None:
            self.smtp = self.backend.connect()
        self.checked = True
        return self.smtp

    def _drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        self.smtp = None

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None

    def prepare(self, email: OutgoingEmail) -> PreparedEmail:
        # A syntactically hopeless address needs no server to be refused.
        check_mailbox(email.to)
        smtp = self._ready()
        return build_message(
            self.backend.sender, email, now=datetime.now(UTC), smtputf8=smtp.has_extn("smtputf8")
        )

    def _lost(self, step: str) -> EmailServerError:
        self._drop()
        return EmailServerError(
            f"{self.where} dropped the connection at {step}, before the message was sent: "
            "check SMTP_HOST and SMTP_PORT"
        )

    def deliver(self, prepared: PreparedEmail) -> str:
        smtp = self._ready()
        self.checked = False  # a transaction starts
        options = []
        if prepared.smtputf8:
            options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        try:
            code, _ = smtp.mail(prepared.envelope_from, options)
        except _LOST:
            raise self._lost("MAIL FROM") from None
        if code != 250:
            self._reset()
            raise self._refused_sender(code)
        try:
            code, _ = smtp.rcpt(prepared.envelope_to)
        except _LOST:
            raise self._lost("RCPT TO") from None
        if code not in (250, 251):
            self._reset()
            raise self._refused_recipient(code)
        try:
            code, _ = smtp.docmd("DATA")
        except _LOST:
            raise self._lost("DATA") from None
        if code != 354:
            self._reset()
            raise self._refused_message(code)
        # From here on the message may reach the server: a lost connection is UNKNOWN.
        try:
            smtp.send(_dot_stuffed(prepared.data))
            code, _ = smtp.getreply()
        except _LOST as exc:
            self._drop()
            raise UnknownEmailOutcome(
                f"{self.where} dropped the connection ({type(exc).__name__}) after the message "
                "was sent, before confirming it: it may have been delivered, so it is counted "
                "and never sent again; check SMTP_HOST and SMTP_PORT"
            ) from None
        if code != 250:
            self._reset()
            raise self._refused_message(code)
        return prepared.message_id

    def _reset(self) -> None:
        """End a refused transaction; a connection that cannot is dropped."""
        if self.smtp is None:
            return
        try:
            self.smtp.rset()
        except _LOST:
            self._drop()

    def _refused_sender(self, code: int) -> EmailError:
        if code == 421:
            self._drop()
            return EmailServerError(f"{self.where} is closing (421): check SMTP_HOST and SMTP_PORT")
        if code in (530, 535):
            return EmailServerError(
                f"{self.where} wants a login ({code}): check SMTP_USERNAME and SMTP_PASSWORD"
            )
        return EmailServerError(f"{self.where} refused the sender ({code}): check EMAIL_FROM")

    def _refused_recipient(self, code: int) -> EmailError:
        if code == 421:
            self._drop()
            return EmailServerError(f"{self.where} is closing (421): check SMTP_HOST and SMTP_PORT")
        if code in (530, 535):
            return EmailServerError(
                f"{self.where} wants a login ({code}): check SMTP_USERNAME and SMTP_PASSWORD"
            )
        if code == 501:  # syntax error in the address
            return InvalidAddressError(f"the SMTP server refused the address syntax ({code})")
        if 500 <= code < 600:
            return PermanentEmailError(f"recipient refused: [{code}]")
        return TransientEmailError(f"recipient deferred: [{code}]")

    def _refused_message(self, code: int) -> EmailError:
        if code == 421:
            self._drop()
            return EmailServerError(f"{self.where} is closing (421): check SMTP_HOST and SMTP_PORT")
        if 500 <= code < 600:
            return PermanentEmailError(f"message refused: SMTP {code}")
        return TransientEmailError(f"message deferred: SMTP {code}")


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, the final `.` line (RFC 5321)."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


# -- SES ---------------------------------------------------------------------------------------

# SES error codes that will not change on retry, for this message.
_SES_PERMANENT = {"MessageRejected", "BadRequestException", "InvalidParameterValue"}
# The credentials or their permissions: no message will go.
_SES_CREDENTIALS = {
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}
# The account cannot send at all right now.
_SES_ACCOUNT = {"AccountSuspendedException", "SendingPausedException", "LimitExceededException"}


@dataclass(frozen=True)
class SesEmailSender(EmailSender):
    """AWS SES v2 (AWS_REGION, AWS_ENDPOINT_URL, EMAIL_FROM); credentials from the environment.

    Sends the same raw MIME message as SMTP (`Date:`, `Message-ID`, checked addresses). The
    client makes one attempt per SendEmail: botocore would retry a read timeout, and a
    retried send may reach the broker twice.
    """

    sender: str
    aws: AwsConfig = field(default_factory=AwsConfig)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0

    def client(self) -> Any:
        """The `sesv2` client for SendEmail: no retries, short connect timeout."""
        return boto3_client(
            replace(self.aws, max_attempts=0),
            "sesv2",
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
        )

    @contextmanager
    def session(self) -> Iterator[EmailSession]:
        yield _SesSession(self, self._built_client())

    def _built_client(self) -> Any:
        try:
            return self.client()
        except NoRegionError:
            raise EmailServerError("no AWS region for SES: set AWS_REGION") from None
        except BotoCoreError as exc:
            raise EmailServerError(
                f"SES client cannot be built ({type(exc).__name__}): check AWS_REGION and "
                "AWS_ENDPOINT_URL"
            ) from None


class _SesSession(EmailSession):
    def __init__(self, backend: SesEmailSender, client: Any) -> None:
        self.backend, self.client = backend, client

    def prepare(self, email: OutgoingEmail) -> PreparedEmail:
        # SES takes 7-bit ASCII addresses only (a non-ASCII domain would need punycode).
        return build_message(self.backend.sender, email, now=datetime.now(UTC), smtputf8=False)

    def deliver(self, prepared: PreparedEmail) -> str:
        try:
            # No Destination: SES takes the recipients from the headers (the one To).
            response = self.client.send_email(
                FromEmailAddress=prepared.envelope_from,
                Content={"Raw": {"Data": prepared.data}},
            )
        except ClientError as exc:
            raise self._classified(exc, prepared) from None
        except HTTPClientError as exc:  # read timeout, connection closed mid-answer
            raise UnknownEmailOutcome(
                f"SES did not answer ({type(exc).__name__}) after the request was sent: the "
                "email may have gone, so it is counted and never sent again; check "
                "AWS_ENDPOINT_URL and AWS_REGION"
            ) from None
        except BotoConnectionError as exc:  # no connection: nothing was sent
            raise EmailServerError(
                f"SES unreachable ({type(exc).__name__}); check AWS_REGION and AWS_ENDPOINT_URL"
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise EmailServerError(
                "no AWS credentials for SES: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or a role)"
            ) from None
        except BotoCoreError as exc:
            raise EmailServerError(
                f"SES call failed before sending ({type(exc).__name__}); check AWS_REGION, "
                "AWS_ENDPOINT_URL and the AWS credentials"
            ) from None
        return str(response["MessageId"])

    def _classified(self, exc: ClientError, prepared: PreparedEmail) -> EmailError:
        code = exc.response.get("Error", {}).get("Code", "")
        text = str(exc.response.get("Error", {}).get("Message", "")).lower()
        if code in _SES_CREDENTIALS:
            return EmailServerError(
                f"SES refused the AWS credentials ({code}): check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_REGION"
            )
        if code == "MailFromDomainNotVerifiedException" or (
            code == "MessageRejected"
            and (prepared.envelope_from.lower() in text or "authority to send from" in text)
        ):
            return EmailServerError(
                f"SES refused the sender ({code}: not a verified identity in this region): "
                "check EMAIL_FROM and AWS_REGION"
            )
        if code == "MessageRejected" and "not verified" in text:
            return EmailServerError(
                "SES refused an unverified recipient (MessageRejected): the SES account is in "
                "the sandbox in this AWS_REGION; request production access"
            )
        if code in _SES_ACCOUNT:
            return EmailServerError(f"SES account cannot send ({code}): check it in AWS_REGION")
        if code in _SES_PERMANENT:
            return PermanentEmailError(f"SES {code}")
        return TransientEmailError(f"SES {code}")


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
