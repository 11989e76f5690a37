"""MongoDB through pymongo: one client per run, the Contract-2 collections and their indexes.

Code here runs unchanged on MongoDB and on FerretDB v1: no transactions, change streams,
TTL indexes or `$lookup`. Indexes are what MongoDB uses in production; FerretDB creates and
enforces them (unique ones) but scans, so callers keep the number of commands per batch small.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field, PrivateAttr
from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

from enrollment_pipeline.lib.mongo.writes import (
    FERRETDB_UPDATES_PER_COMMAND,
    MONGODB_UPDATES_PER_COMMAND,
    BoundedWriter,
)
from enrollment_pipeline.settings import PipelineSettings

# Contract 2 collection names.
ENROLLMENT_EVENTS = "enrollment_events"
APPLICATIONS = "applications"
BROKER_FOLLOWUPS = "broker_followups"
FOLLOWUP_ATTEMPTS = "followup_attempts"
DEAD_LETTERS = "dead_letters"
CONSUMER_OFFSETS = "consumer_offsets"
# Source events whose leads are out (an insert is cheap; an update is a scan on FerretDB).
LEAD_PUBLICATIONS = "lead_publications"
# One per lead the CRM was asked to take: delivered, parked or failed (Contract 4).
LEAD_DELIVERIES = "lead_deliveries"

# The queries the pipeline makes, each backed by an index (unique where the contract says so).
INDEXES: dict[str, list[IndexModel]] = {
    ENROLLMENT_EVENTS: [
        IndexModel([("event_id", ASCENDING)], unique=True, name="event_id_unique"),
        IndexModel([("application_id", ASCENDING)], name="application_id"),
    ],
    APPLICATIONS: [
        IndexModel([("status", ASCENDING)], name="status"),
        IndexModel([("broker_followup_status", ASCENDING)], name="broker_followup_status"),
    ],
    BROKER_FOLLOWUPS: [
        IndexModel([("status", ASCENDING), ("next_due_at", ASCENDING)], name="due"),
    ],
    FOLLOWUP_ATTEMPTS: [
        IndexModel([("app_id", ASCENDING)], name="app_id"),
    ],
    DEAD_LETTERS: [
        IndexModel([("reason", ASCENDING), ("last_seen_at", ASCENDING)], name="reason_time"),
    ],
    LEAD_DELIVERIES: [
        IndexModel([("application_id", ASCENDING), ("status", ASCENDING)], name="application"),
        IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="retry_due"),
    ],
    CONSUMER_OFFSETS: [
        IndexModel(
            [("group", ASCENDING), ("topic", ASCENDING), ("partition", ASCENDING)],
            unique=True,
            name="group_topic_partition",
        ),
    ],
}


def mongo_from_settings(
    settings: PipelineSettings,
    *,
    uri: str | dg.EnvVar | None = None,
    database: str | None = None,
) -> MongoResource:
    """The resource configured by the Contract-6 variables (arguments override them)."""
    return MongoResource(
        uri=uri if uri is not None else settings.mongo_uri,
        database=database or settings.mongo_database,
        timeout_ms=settings.mongo_timeout_ms,
        max_writes_per_command=settings.mongo_max_writes_per_command,
    )


# (uri, database) pairs whose indexes this process has made sure of: once is enough.
_INDEXED: set[tuple[str, str]] = set()


class MongoUnavailableError(RuntimeError):
    """The server did not answer; the message names the server and the setting to check."""


class MongoResource(dg.ConfigurableResource):
    """A MongoDB (or MongoDB-wire) database (MONGO_URI, MONGO_DATABASE).

    Every wait is bounded: connecting and choosing a server by `server_selection_timeout_ms`,
    each command by `timeout_ms`, so a stalled server fails the run (and the sensor asks for
    its range again) instead of holding it forever.
    """

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
    create_indexes: bool = True

    _client: MongoClient | None = PrivateAttr(default=None)
    _engine: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fail the run at start when the server is unreachable; make sure indexes exist."""
        self.ping()
        if self.create_indexes and (self.uri, self.database) not in _INDEXED:
            with self.explained_errors():
                self.ensure_indexes()
            _INDEXED.add((self.uri, self.database))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _redacted_uri(self) -> str:
        """The URI without credentials, for messages."""
        scheme, _, rest = self.uri.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    def client(self) -> MongoClient:
        if self._client is None:
            self._client = MongoClient(
                self.uri,
                serverSelectionTimeoutMS=self.server_selection_timeout_ms,
                connectTimeoutMS=self.server_selection_timeout_ms,
                socketTimeoutMS=self.timeout_ms,
                waitQueueTimeoutMS=self.timeout_ms,
                tz_aware=True,
                appname="enrollment-pipeline",
            )
        return self._client

    def db(self) -> Database:
        return self.client()[self.database]

    def engine(self) -> str:
        """`ferretdb` or `mongodb`, from the server's buildInfo (asked once)."""
        if self._engine is None:
            with self.explained_errors():
                info = self.client().admin.command("buildInfo")
            self._engine = "ferretdb" if "ferretdbVersion" in info else "mongodb"
        return self._engine

    def writer(self) -> BoundedWriter:
        """The bounded write helper for this server (see `lib/mongo/writes.py`)."""
        per_command = self.max_writes_per_command or (
            FERRETDB_UPDATES_PER_COMMAND
            if self.engine() == "ferretdb"
            else MONGODB_UPDATES_PER_COMMAND
        )
        return BoundedWriter(updates_per_command=per_command)

    def ping(self) -> None:
        with self.explained_errors():
            self.client().admin.command("ping")

    @contextmanager
    def explained_errors(self) -> Iterator[None]:
        """Turn a timeout or a lost server into an error naming the server and the setting."""
        try:
            yield
        except PyMongoError as exc:
            if not (exc.timeout or isinstance(exc, ConnectionFailure)):
                raise
            raise MongoUnavailableError(self.unavailable_message(exc)) from exc

    def unavailable_message(self, exc: PyMongoError) -> str:
        if isinstance(exc, ServerSelectionTimeoutError):
            waited = f"{self.server_selection_timeout_ms} ms to connect"
            fix = "check MONGO_URI and that the server runs"
        else:
            waited = f"{self.timeout_ms} ms (MONGO_TIMEOUT_MS) for one command"
            fix = (
                "the server is stalled or overloaded; check it (`enrollment-pipeline stack "
                "status` for the local one), or raise MONGO_TIMEOUT_MS for very large batches"
            )
        return (
            f"MongoDB at {self._redacted_uri()} did not answer within {waited} "
            f"({type(exc).__name__}); {fix}"
        )

    def ensure_indexes(self) -> None:
        """Create the Contract-2 indexes that are missing.

        Only the missing ones: FerretDB v1 drops the connection when one `createIndexes`
        names several indexes that all exist already.
        """
        db = self.db()
        for collection, indexes in INDEXES.items():
            existing = set(db[collection].index_information())
            missing = [index for index in indexes if index.document["name"] not in existing]
            if missing:
                db[collection].create_indexes(missing)
