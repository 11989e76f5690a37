"""MongoDB through pymongo: one client per run, the Contract-2 collections and their indexes.

Code here runs unchanged on MongoDB and on FerretDB v1: no transactions, change streams,
TTL indexes or `$lookup`. Indexes are what MongoDB uses in production; FerretDB creates and
enforces them (unique ones) but scans, so callers keep the number of commands per batch small.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

# Contract 2 collection names.
ENROLLMENT_EVENTS = "enrollment_events"
APPLICATIONS = "applications"
BROKER_FOLLOWUPS = "broker_followups"
FOLLOWUP_ATTEMPTS = "followup_attempts"
DEAD_LETTERS = "dead_letters"
CONSUMER_OFFSETS = "consumer_offsets"
# Source events whose leads are out (an insert is cheap; an update is a scan on FerretDB).
LEAD_PUBLICATIONS = "lead_publications"

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
    CONSUMER_OFFSETS: [
        IndexModel(
            [("group", ASCENDING), ("topic", ASCENDING), ("partition", ASCENDING)],
            unique=True,
            name="group_topic_partition",
        ),
    ],
}


# (uri, database) pairs whose indexes this process has made sure of: once is enough.
_INDEXED: set[tuple[str, str]] = set()


class MongoUnavailableError(RuntimeError):
    """The server did not answer; the message names the setting to check."""


class MongoResource(dg.ConfigurableResource):
    """A MongoDB (or MongoDB-wire) database (MONGO_URI, MONGO_DATABASE)."""

    uri: str = Field(description="MONGO_URI; set with dg.EnvVar when it holds credentials")
    database: str = Field(default="enrollment", description="MONGO_DATABASE")
    server_selection_timeout_ms: int = 5_000
    create_indexes: bool = True

    _client: MongoClient | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fail the run at start when the server is unreachable; make sure indexes exist."""
        self.ping()
        if self.create_indexes and (self.uri, self.database) not in _INDEXED:
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
                tz_aware=True,
                appname="enrollment-pipeline",
            )
        return self._client

    def db(self) -> Database:
        return self.client()[self.database]

    def ping(self) -> None:
        try:
            self.client().admin.command("ping")
        except PyMongoError as exc:
            raise MongoUnavailableError(
                f"MongoDB at {self._redacted_uri()} did not answer within "
                f"{self.server_selection_timeout_ms} ms ({type(exc).__name__}); check MONGO_URI"
            ) from exc

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
