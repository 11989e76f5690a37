"""dagster-aws's shared boto3 settings, as the plain configuration `lib/clients/aws.py` takes."""

from __future__ import annotations

from dagster_aws.utils import ResourceWithBoto3Configuration

from enrollment_pipeline.lib.clients.aws import AwsConfig


def aws_config(resource: ResourceWithBoto3Configuration) -> AwsConfig:
    return AwsConfig(
        region_name=resource.region_name,
        endpoint_url=resource.endpoint_url,
        profile_name=resource.profile_name,
        use_ssl=resource.use_ssl,
        verify=resource.verify,
        aws_access_key_id=resource.aws_access_key_id,
        aws_secret_access_key=resource.aws_secret_access_key,
        aws_session_token=resource.aws_session_token,
        max_attempts=resource.max_attempts,
    )
