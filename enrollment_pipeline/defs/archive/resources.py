"""`archive`: the historic archive (a folder or S3), a thin resource over
`lib/clients/archive.Archive`."""

from __future__ import annotations

import dagster as dg
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field

from enrollment_pipeline.defs.aws_config import aws_config
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import ArchiveSettings


class ArchiveResource(ResourceWithBoto3Configuration):
    """ARCHIVE_ROOT (a folder, or s3:// with AWS_REGION / AWS_ENDPOINT_URL)."""

    root: str = Field(description="ARCHIVE_ROOT: a folder or s3://bucket/prefix")

    @classmethod
    def from_settings(cls, settings: ArchiveSettings) -> ArchiveResource:
        archive = Archive.from_settings(settings)
        return cls(
            root=archive.root,
            region_name=archive.aws.region_name,
            endpoint_url=archive.aws.endpoint_url,
        )

    def get_client(self) -> Archive:
        return Archive(root=self.root, aws=aws_config(self))


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        resources={"archive": ArchiveResource.from_settings(load(ArchiveSettings))}
    )
