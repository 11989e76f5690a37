"""boto3 clients built from dagster-aws's shared settings (region, endpoint, credentials)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from dagster_aws.utils import ResourceWithBoto3Configuration


def boto3_client(settings: ResourceWithBoto3Configuration, service: str, **config: Any) -> Any:
    """A `service` client with bounded standard retries; `config` adds botocore settings."""
    session = boto3.session.Session(profile_name=settings.profile_name)
    return session.client(
        service,
        region_name=settings.region_name,
        endpoint_url=settings.endpoint_url,
        use_ssl=settings.use_ssl,
        verify=settings.verify,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        aws_session_token=settings.aws_session_token,
        config=Config(
            retries={"max_attempts": settings.max_attempts, "mode": "standard"}, **config
        ),
    )
