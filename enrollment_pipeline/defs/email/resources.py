"""`email`: SMTP or AWS SES (dagster-aws's boto3 settings), thin resources over the senders of
`lib/clients/email.py`; EMAIL_BACKEND picks one."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import dagster as dg
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field

from enrollment_pipeline.defs.aws_config import aws_config
from enrollment_pipeline.defs.secrets import secret_env
from enrollment_pipeline.lib.clients.email import (
    EmailSender,
    SesEmailSender,
    SmtpEmailSender,
    email_sender,
)
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import EmailSettings


class EmailResource(dg.ConfigurableResource, ABC):
    """What the follow-up job needs: a sender."""

    @abstractmethod
    def get_client(self) -> EmailSender: ...


class SmtpEmailResource(EmailResource):
    """SMTP (SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD, SMTP_STARTTLS, EMAIL_FROM)."""

    host: str
    port: int = 25
    username: str | None = None
    password: str | None = Field(default=None, description="set with dg.EnvVar('SMTP_PASSWORD')")
    starttls: bool = False
    use_ssl: bool = Field(default=False, description="SMTP_SSL: TLS from the first byte (465)")
    sender: str = Field(description="EMAIL_FROM")
    timeout_s: float = 10.0

    def get_client(self) -> SmtpEmailSender:
        return SmtpEmailSender(**{name: getattr(self, name) for name in type(self).model_fields})


class SesEmailResource(ResourceWithBoto3Configuration, EmailResource):
    """AWS SES v2 (AWS_REGION, AWS_ENDPOINT_URL, EMAIL_FROM); credentials from the environment."""

    sender: str = Field(description="EMAIL_FROM, a verified SES identity")

    def get_client(self) -> SesEmailSender:
        return SesEmailSender(sender=self.sender, aws=aws_config(self))


def email_resource(settings: EmailSettings) -> EmailResource:
    """The resource of the sender EMAIL_BACKEND names (the SMTP password as an EnvVar)."""
    sender = email_sender(settings)
    if isinstance(sender, SesEmailSender):
        return SesEmailResource(
            sender=sender.sender,
            region_name=sender.aws.region_name,
            endpoint_url=sender.aws.endpoint_url,
        )
    assert isinstance(sender, SmtpEmailSender)
    fields = {f.name: getattr(sender, f.name) for f in dataclasses.fields(sender)}
    return SmtpEmailResource(**{**fields, "password": secret_env("SMTP_PASSWORD")})


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"email": email_resource(load(EmailSettings))})
