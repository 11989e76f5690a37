"""`crm`: the CRM's REST API, as a thin resource over `lib/clients/crm.CrmClient`."""

from __future__ import annotations

import dataclasses

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.secrets import secret_env
from enrollment_pipeline.lib.clients.crm import RETRY_AFTER_MAX_S, CrmClient
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import CrmSettings


class CrmResource(dg.ConfigurableResource):
    """LEAD_API_URL, LEAD_API_TOKEN (through dg.EnvVar) and the retry policy of one lead.
    Set-up checks the configuration, so a misconfigured CRM fails a run at its start in one
    line, before any lead is touched."""

    base_url: str = Field(description="LEAD_API_URL")
    token: str | None = Field(default=None, description="LEAD_API_TOKEN, set with dg.EnvVar")
    allow_http: bool = Field(
        default=False,
        description="LEAD_API_ALLOW_HTTP: send the token over plain http:// (loopback only)",
    )
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    request_deadline_s: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_max_s: float = Field(default=RETRY_AFTER_MAX_S, ge=0)

    @classmethod
    def from_settings(cls, settings: CrmSettings) -> CrmResource:
        return cls.from_client(
            CrmClient.from_settings(settings), token=secret_env("LEAD_API_TOKEN")
        )

    @classmethod
    def from_client(cls, client: CrmClient, **overrides: object) -> CrmResource:
        fields = {f.name: getattr(client, f.name) for f in dataclasses.fields(client)}
        return cls(**{**fields, **overrides})

    def get_client(self) -> CrmClient:
        return CrmClient(**{name: getattr(self, name) for name in type(self).model_fields})

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.get_client().check_config()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"crm": CrmResource.from_settings(load(CrmSettings))})
