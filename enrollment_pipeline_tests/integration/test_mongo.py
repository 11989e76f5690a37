"""The Mongo resource against the real MongoDB-wire server (mongod or FerretDB)."""

from __future__ import annotations

import time

import pytest
from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from enrollment_pipeline.lib.clients.mongo import (
    MongoConfig,
    MongoConnection,
    MongoUnavailableError,
)
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, ENROLLMENT_EVENTS, INDEXES

pytestmark = pytest.mark.integration


def test_indexes_of_contract_2_exist(mongo: MongoConnection):
    db = mongo.db()
    for collection, indexes in INDEXES.items():
        names = set(db[collection].index_information())
        assert {index.document["name"] for index in indexes} <= names, collection
    mongo.ensure_indexes()  # idempotent


def test_event_id_is_unique(mongo: MongoConnection):
    events = mongo.db()[ENROLLMENT_EVENTS]
    events.insert_one({"event_id": "e-1", "application_id": "APP-1"})
    with pytest.raises(DuplicateKeyError) as caught:
        events.insert_one({"event_id": "e-1", "application_id": "APP-2"})
    assert caught.value.code == 11000
    assert events.count_documents({}) == 1


def test_bulk_upsert_then_find_by_in(mongo: MongoConnection):
    apps = mongo.db()[APPLICATIONS]
    ops = [
        UpdateOne({"_id": f"APP-{i}"}, {"$set": {"status": "SUBMITTED", "n": i}}, upsert=True)
        for i in range(50)
    ]
    result = apps.bulk_write(ops, ordered=False)
    assert result.upserted_count == 50
    again = apps.bulk_write(
        [UpdateOne({"_id": "APP-3"}, {"$set": {"status": "APPROVED"}}, upsert=True)]
    )
    assert (again.matched_count, again.upserted_count) == (1, 0)
    found = {d["_id"]: d["status"] for d in apps.find({"_id": {"$in": ["APP-3", "APP-4", "X"]}})}
    assert found == {"APP-3": "APPROVED", "APP-4": "SUBMITTED"}


def test_unreachable_server_fails_fast_naming_the_setting():
    resource = MongoConnection(
        MongoConfig(uri="mongodb://user:secret@127.0.0.1:1/", server_selection_timeout_ms=1000)
    )
    started = time.monotonic()
    with pytest.raises(MongoUnavailableError, match="MONGO_URI") as caught:
        resource.ping()
    assert time.monotonic() - started < 10
    assert "secret" not in str(caught.value)
