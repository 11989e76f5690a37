"""Email senders: SMTP (smtplib) and AWS SES (boto3 `sesv2` on dagster-aws's boto3 settings).

Both raise the same two errors so the follow-up job can apply Contract 3 without knowing the
backend: `TransientEmailError` (try again next run, not counted as sent) and
`PermanentEmailError` (recipient rejected or invalid: the follow-up goes PENDING).
"""

from __future__ import annotations

import smtplib
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from email.message import EmailMessage as MimeMessage

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field

from enrollment_pipeline.defs.aws import boto3_client


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    subject: str
    body: str


class TransientEmailError(RuntimeError):
    """The send may succeed later (server down, throttled, 4xx)."""


class PermanentEmailError(RuntimeError):
    """The recipient will never accept this message (5xx recipient error, invalid address)."""


class EmailSender(ABC):
    """What the follow-up job needs of an email backend."""

    @abstractmethod
    def send(self, email: OutgoingEmail) -> str:
        """Send one email; return the backend's message id."""


class SmtpEmailSender(dg.ConfigurableResource, EmailSender):
    """SMTP (SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD, SMTP_STARTTLS, EMAIL_FROM)."""

    host: str
    port: int = 25
    username: str | None = None
    password: str | None = Field(default=None, description="set with dg.EnvVar('SMTP_PASSWORD')")
    starttls: bool = False
    sender: str = Field(description="EMAIL_FROM")
    timeout_s: float = 10.0

    def send(self, email: OutgoingEmail) -> str:
        message = MimeMessage()
        message["From"] = self.sender
        message["To"] = email.to
        message["Subject"] = email.subject
        message.set_content(email.body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentEmailError(f"recipient refused: {codes}") from exc
            raise TransientEmailError(f"recipient deferred: {codes}") from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code in (550, 551, 553) and not isinstance(exc, smtplib.SMTPSenderRefused):
                raise PermanentEmailError(f"SMTP {exc.smtp_code}") from exc
            raise TransientEmailError(f"SMTP {exc.smtp_code}") from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise TransientEmailError(
                f"SMTP server {self.host}:{self.port} unavailable ({type(exc).__name__}); "
                "check SMTP_HOST and SMTP_PORT"
            ) from exc
        return str(message.get("Message-ID") or "")


# SES error codes that will not change on retry.
_SES_PERMANENT = {"MessageRejected", "BadRequestException", "InvalidParameterValue"}


class SesEmailSender(ResourceWithBoto3Configuration, EmailSender):
    """AWS SES v2 (AWS_REGION, AWS_ENDPOINT_URL, EMAIL_FROM); credentials from the environment."""

    sender: str = Field(description="EMAIL_FROM, a verified SES identity")

    def _client(self):
        return boto3_client(self, "sesv2", connect_timeout=5, read_timeout=15)

    def send(self, email: OutgoingEmail) -> str:
        try:
            response = self._client().send_email(
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [email.to]},
                Content={
                    "Simple": {
                        "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                        "Body": {"Text": {"Data": email.body, "Charset": "UTF-8"}},
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
                f"SES unreachable ({type(exc).__name__}); check AWS_REGION and AWS_ENDPOINT_URL"
            ) from exc
        return response["MessageId"]
