"""`kafka`: the Kafka cluster, as a thin resource over `lib/clients/kafka.KafkaClient`."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from enrollment_pipeline.defs.secrets import secret_env
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import KafkaSettings


class KafkaResource(dg.ConfigurableResource):
    """One Kafka cluster (the KAFKA_* variables of Contract 6); `get_client()` is the client,
    made on first use and closed when the run or the sensor tick ends."""

    bootstrap_servers: str = Field(description="host:port[,host:port], KAFKA_BOOTSTRAP_SERVERS")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, …")
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, description="KAFKA_SASL_PASSWORD (EnvVar)")
    ssl_cafile: str | None = None

    _client: KafkaClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaResource:
        config = KafkaConfig.from_settings(settings)
        return cls.from_config(config, sasl_password=secret_env("KAFKA_SASL_PASSWORD"))

    @classmethod
    def from_config(cls, config: KafkaConfig, **overrides: object) -> KafkaResource:
        """The resource of a client's configuration (secrets may be given as `dg.EnvVar`)."""
        fields = {name: getattr(config, name) for name in cls.model_fields}
        return cls(**{**fields, **overrides})

    def get_client(self) -> KafkaClient:
        if self._client is None:
            self._client = KafkaClient(
                KafkaConfig(**{name: getattr(self, name) for name in type(self).model_fields})
            )
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"kafka": KafkaResource.from_settings(load(KafkaSettings))})
