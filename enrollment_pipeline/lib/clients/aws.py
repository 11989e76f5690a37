"""boto3 clients from one small configuration (region, endpoint, credentials), bounded retries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from enrollment_pipeline.settings import AwsSettings


@dataclass(frozen=True)
class AwsConfig:
    """What boto3 needs; credentials default to the environment's chain (role, variables)."""

    region_name: str | None = None
    endpoint_url: str | None = None
    profile_name: str | None = None
    use_ssl: bool = True
    verify: bool | str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: AwsSettings) -> AwsConfig:
        return cls(region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)


def boto3_client(aws: AwsConfig, service: str, **config: Any) -> Any:
    """A `service` client with bounded standard retries; `config` adds botocore settings."""
    retries = config.pop("retries", {"max_attempts": aws.max_attempts, "mode": "standard"})
    session = boto3.session.Session(profile_name=aws.profile_name)
    return session.client(
        service,
        region_name=aws.region_name,
        endpoint_url=aws.endpoint_url,
        use_ssl=aws.use_ssl,
        verify=aws.verify,
        aws_access_key_id=aws.aws_access_key_id,
        aws_secret_access_key=aws.aws_secret_access_key,
        aws_session_token=aws.aws_session_token,
        config=Config(retries=retries, **config),
    )
