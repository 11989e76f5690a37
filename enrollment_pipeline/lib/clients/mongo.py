"""The MongoDB client: one pymongo client per process or run, every wait bounded.

Code here runs unchanged on MongoDB and on FerretDB v1: no transactions, change streams,
TTL indexes or `$lookup`. Every wait is bounded: connecting and choosing a server by
`server_selection_timeout_ms`, each command by `timeout_ms`, so a stalled server fails the
run (and the sensor asks for its range again) instead of holding it forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import (
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from enrollment_pipeline.lib.mongo.collections import INDEXES, Document
from enrollment_pipeline.lib.mongo.writes import (
    FERRETDB_COMMANDS_IN_FLIGHT,
    FERRETDB_UPDATES_PER_COMMAND,
    MONGODB_COMMANDS_IN_FLIGHT,
    MONGODB_UPDATES_PER_COMMAND,
    BoundedWriter,
)
from enrollment_pipeline.settings import MongoSettings


class MongoUnavailableError(RuntimeError):
    """The server did not answer; the message names the server and the setting to check."""


class MongoAuthenticationError(MongoUnavailableError):
    """The server refused the credentials of MONGO_URI, or requires some; the message names
    the setting, never the credentials."""


# MongoDB's codes for a refused login and for a command that needs an authenticated user.
AUTHENTICATION_FAILED = 18
UNAUTHORIZED = 13


@dataclass(frozen=True)
class MongoConfig:
    """MONGO_URI (may hold credentials: never shown), MONGO_DATABASE and the limits."""

    uri: str
    database: str = "enrollment"
    server_selection_timeout_ms: int = 5_000
    timeout_ms: int = 30_000
    max_writes_per_command: int | None = None
    commands_in_flight: int | None = None

    def __repr__(self) -> str:
        return f"MongoConfig(uri={redacted_uri(self.uri)!r}, database={self.database!r})"

    @classmethod
    def from_settings(cls, settings: MongoSettings) -> MongoConfig:
        """The one mapping from the environment's variables to a client's configuration."""
        return cls(
            uri=settings.mongo_uri,
            database=settings.mongo_database,
            timeout_ms=settings.mongo_timeout_ms,
            max_writes_per_command=settings.mongo_max_writes_per_command,
            commands_in_flight=settings.mongo_write_commands_in_flight,
        )


def redacted_uri(uri: str) -> str:
    """The URI without credentials, for messages."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class MongoConnection:
    """One database of one server: the pymongo client (made on first use), the engine, the
    bounded writer for it, and errors that name the server and the setting to fix."""

    def __init__(self, config: MongoConfig) -> None:
        self.config = config
        self._client: MongoClient[Document] | None = None
        self._engine: str | None = None

    @classmethod
    def from_settings(cls, settings: MongoSettings) -> MongoConnection:
        return cls(MongoConfig.from_settings(settings))

    @property
    def database(self) -> str:
        return self.config.database

    @property
    def uri(self) -> str:
        return self.config.uri

    def __enter__(self) -> MongoConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def client(self) -> MongoClient[Document]:
        if self._client is None:
            c = self.config
            self._client = MongoClient(
                c.uri,
                serverSelectionTimeoutMS=c.server_selection_timeout_ms,
                connectTimeoutMS=c.server_selection_timeout_ms,
                socketTimeoutMS=c.timeout_ms,
                waitQueueTimeoutMS=c.timeout_ms,
                tz_aware=True,
                appname="enrollment-pipeline",
            )
        return self._client

    def db(self) -> Database[Document]:
        return self.client()[self.config.database]

    def engine(self) -> str:
        """`ferretdb` or `mongodb`, from the server's buildInfo (asked once)."""
        if self._engine is None:
            with self.explained_errors():
                info = self.client().admin.command("buildInfo")
            self._engine = "ferretdb" if "ferretdbVersion" in info else "mongodb"
        return self._engine

    def writer(self) -> BoundedWriter:
        """The bounded write helper for this server (see `lib/mongo/writes.py`)."""
        ferretdb = self.engine() == "ferretdb"
        per_command = self.config.max_writes_per_command or (
            FERRETDB_UPDATES_PER_COMMAND if ferretdb else MONGODB_UPDATES_PER_COMMAND
        )
        in_flight = self.config.commands_in_flight or (
            FERRETDB_COMMANDS_IN_FLIGHT if ferretdb else MONGODB_COMMANDS_IN_FLIGHT
        )
        return BoundedWriter(updates_per_command=per_command, commands_in_flight=in_flight)

    def ping(self) -> None:
        with self.explained_errors():
            self.client().admin.command("ping")

    @contextmanager
    def explained_errors(self) -> Iterator[None]:
        """Turn a timeout or a lost server into an error naming the server and the setting."""
        try:
            yield
        except OperationFailure as exc:
            if exc.code not in (AUTHENTICATION_FAILED, UNAUTHORIZED):
                raise
            raise MongoAuthenticationError(self.refused_message(exc)) from None
        except PyMongoError as exc:
            if not (exc.timeout or isinstance(exc, ConnectionFailure)):
                raise
            raise MongoUnavailableError(self.unavailable_message(exc)) from exc

    def refused_message(self, exc: OperationFailure) -> str:
        """One line for a refused login or an unauthenticated command (no credentials)."""
        server = redacted_uri(self.config.uri)
        if exc.code == AUTHENTICATION_FAILED:
            return (
                f"MongoDB at {server} refused the user and password of MONGO_URI "
                "(AuthenticationFailed); check the credentials in MONGO_URI (and its authSource)"
            )
        if "@" not in self.config.uri.partition("://")[2].split("/")[0]:
            return (
                f"MongoDB at {server} requires authentication (Unauthorized); put a user and "
                "password in MONGO_URI (mongodb://user:password@host/?authSource=admin)"
            )
        return (
            f"MongoDB at {server} refused a command to the user of MONGO_URI (Unauthorized); "
            "check that user's roles on MONGO_DATABASE"
        )

    def unavailable_message(self, exc: PyMongoError) -> str:
        c = self.config
        if isinstance(exc, ServerSelectionTimeoutError):
            waited = f"{c.server_selection_timeout_ms} ms to connect"
            fix = "check MONGO_URI and that the server runs"
        else:
            waited = f"{c.timeout_ms} ms (MONGO_TIMEOUT_MS) for one command"
            fix = (
                "the server is stalled or overloaded; check it (`enrollment-pipeline stack "
                "status` for the local one), or raise MONGO_TIMEOUT_MS for very large batches"
            )
        return (
            f"MongoDB at {redacted_uri(c.uri)} did not answer within {waited} "
            f"({type(exc).__name__}); {fix}"
        )

    def ensure_indexes(self) -> None:
        """Create the Contract-2 indexes that are missing.

        Only the missing ones: FerretDB v1 drops the connection when one `createIndexes`
        names several indexes that all exist already.
        """
        db = self.db()
        with self.explained_errors():
            for collection, indexes in INDEXES.items():
                existing = set(db[collection].index_information())
                missing = [index for index in indexes if index.document["name"] not in existing]
                if missing:
                    db[collection].create_indexes(missing)
