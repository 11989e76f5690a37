"""`mongo`: the MongoDB database, as a thin resource over `lib/clients/mongo.MongoConnection`."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from enrollment_pipeline.defs.secrets import secret_env
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import MongoSettings

# (uri, database) pairs whose indexes this process has made sure of: once is enough.
_INDEXED: set[tuple[str, str]] = set()


class MongoResource(dg.ConfigurableResource):
    """A MongoDB (or MongoDB-wire) database (MONGO_URI, MONGO_DATABASE). Set-up pings the
    server, so a run fails at start with a message naming the server when it is away, and
    creates the missing indexes once per process."""

    uri: str = Field(description="MONGO_URI; set with dg.EnvVar when it holds credentials")
    database: str = Field(default="enrollment", description="MONGO_DATABASE")
    server_selection_timeout_ms: int = 5_000
    timeout_ms: int = Field(
        default=30_000, description="MONGO_TIMEOUT_MS: the longest one command may take"
    )
    max_writes_per_command: int | None = Field(
        default=None,
        description="MONGO_MAX_WRITES_PER_COMMAND; unset: 10 on FerretDB, 1,000 on MongoDB",
    )
    commands_in_flight: int | None = Field(
        default=None,
        description="MONGO_WRITE_COMMANDS_IN_FLIGHT; unset: 3 on FerretDB, 1 on MongoDB",
    )
    create_indexes: bool = True

    _client: MongoConnection | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: MongoSettings) -> MongoResource:
        config = MongoConfig.from_settings(settings)
        # MONGO_URI may carry credentials: resolve it at launch, keep it out of the UI.
        uri = secret_env("MONGO_URI")
        return cls.from_config(config, **({"uri": uri} if uri is not None else {}))

    @classmethod
    def from_config(cls, config: MongoConfig, **overrides: object) -> MongoResource:
        fields = {name: getattr(config, name) for name in MongoConfig.__dataclass_fields__}
        return cls(**{**fields, **overrides})

    def get_client(self) -> MongoConnection:
        if self._client is None:
            self._client = MongoConnection(
                MongoConfig(
                    uri=self.uri,
                    database=self.database,
                    server_selection_timeout_ms=self.server_selection_timeout_ms,
                    timeout_ms=self.timeout_ms,
                    max_writes_per_command=self.max_writes_per_command,
                    commands_in_flight=self.commands_in_flight,
                )
            )
        return self._client

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fail at start when the server is unreachable; make sure the indexes exist."""
        client = self.get_client()
        client.ping()
        if self.create_indexes and (self.uri, self.database) not in _INDEXED:
            client.ensure_indexes()
            _INDEXED.add((self.uri, self.database))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"mongo": MongoResource.from_settings(load(MongoSettings))})
