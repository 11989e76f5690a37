"""Queries and writes by `_id` return the same results whatever the server does with them.

FerretDB on PostgreSQL can be built with a patch that turns `_id` equality and `_id: {$in}`
on strings and ObjectIds into lookups on the `_id` index (see
`enrollment_pipeline/stack/patches/`); every other `_id` type must fall back to the old
scan. These tests assert results only, never plans, so they pass on stock FerretDB, patched
FerretDB and MongoDB alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bson import Int64, ObjectId, Regex
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection

from enrollment_pipeline.lib.clients.mongo import MongoConnection

pytestmark = pytest.mark.integration

OID_HEX = "6256c5ba0badc0ffeeffffff"
OID = ObjectId(OID_HEX)
OTHER_OID = ObjectId("6256c5ba0badc0ffee000001")
MISSING_OID = ObjectId("6256c5ba0badc0ffee0000ff")
ODD_STRING = 'a"b\\c <&> é 😀'
DOC_ID = {"app": "APP-0000009", "seq": 1}

# One collection holding every `_id` type the tests query, so a wrong narrowing of one type
# would show as a missing (or extra) document of another. (No string equal to OID's hex form:
# FerretDB on PostgreSQL stores both as the same JSON string, and its unique index rejects it.)
DOCS = [
    *({"_id": f"APP-{i:07d}", "kind": "string", "n": i} for i in range(1, 6)),
    {"_id": ODD_STRING, "kind": "string", "n": 6},
    {"_id": OID, "kind": "oid", "n": 8},
    {"_id": OTHER_OID, "kind": "oid", "n": 9},
    {"_id": 1, "kind": "int", "n": 10},
    {"_id": 2, "kind": "int", "n": 11},
    {"_id": Int64(3), "kind": "long", "n": 12},
    {"_id": 4.5, "kind": "double", "n": 13},
    {"_id": DOC_ID, "kind": "document", "n": 14},
]


@pytest.fixture
def coll(mongo: MongoConnection) -> Iterator[Collection]:
    # Own client with a socket timeout: a server that stops answering fails the test.
    client: MongoClient = MongoClient(
        mongo.uri, serverSelectionTimeoutMS=5_000, socketTimeoutMS=30_000
    )
    collection = client[mongo.database]["id_pushdown"]
    collection.insert_many(DOCS)
    yield collection
    client.close()


def ns(collection: Collection, query: dict) -> list[int]:
    return sorted(doc["n"] for doc in collection.find(query))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"_id": "APP-0000002"}, [2]),
        ({"_id": {"$eq": "APP-0000002"}}, [2]),
        ({"_id": "APP-9999999"}, []),
        ({"_id": ""}, []),
        ({"_id": ODD_STRING}, [6]),
        ({"_id": {"$eq": ODD_STRING}}, [6]),
        # a string equal to an ObjectId's hex form is a different _id
        ({"_id": OID_HEX}, []),
        ({"_id": OID.binary.hex().upper()}, []),
        ({"_id": OID}, [8]),
        ({"_id": {"$eq": OID}}, [8]),
        ({"_id": MISSING_OID}, []),
        # other types fall back to the scan
        ({"_id": 1}, [10]),
        ({"_id": 2.0}, [11]),
        ({"_id": Int64(2)}, [11]),
        ({"_id": 3}, [12]),
        ({"_id": {"$eq": 4.5}}, [13]),
        ({"_id": DOC_ID}, [14]),
        ({"_id": {"$eq": DOC_ID}}, [14]),
        ({"_id": {"app": "APP-0000009", "seq": 2}}, []),
        # equality with another condition
        ({"_id": "APP-0000002", "kind": "string"}, [2]),
        ({"_id": "APP-0000002", "kind": "oid"}, []),
        ({"_id": OID, "n": 8}, [8]),
        ({"_id": {"$ne": "APP-0000002"}, "kind": "string"}, [1, 3, 4, 5, 6]),
    ],
)
def test_equality_on_id(coll: Collection, query: dict, expected: list[int]):
    assert ns(coll, query) == expected
    assert coll.count_documents(query) == len(expected)
    found = coll.find_one(query)
    assert (found["n"] if found else None) == (expected[0] if expected else None)


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (["APP-0000001", "APP-0000003", "APP-9999999"], [1, 3]),
        ([f"APP-{i:07d}" for i in range(0, 5_000)], [1, 2, 3, 4, 5]),
        (["APP-9999998", "APP-9999999"], []),
        ([], []),
        ([ODD_STRING, OID_HEX], [6]),
        ([OID, OTHER_OID, MISSING_OID], [8, 9]),
        ([OID_HEX, OID], [8]),
        ([OID_HEX, str(OTHER_OID)], []),
        (["APP-0000001", OID], [1, 8]),
        # other or mixed types fall back to the scan
        ([1, 3, 99], [10, 12]),
        ([2.0, Int64(1)], [10, 11]),
        ([4.5], [13]),
        ([DOC_ID, "APP-0000005"], [5, 14]),
        (["APP-0000002", 2, OID, DOC_ID, "missing", None], [2, 8, 11, 14]),
        ([Regex("^APP-000000[12]$"), OID], [1, 2, 8]),
        ([None], []),
    ],
)
def test_in_on_id(coll: Collection, ids: list, expected: list[int]):
    query = {"_id": {"$in": ids}}
    assert ns(coll, query) == expected
    assert coll.count_documents(query) == len(expected)
    pipeline = [{"$match": query}, {"$sort": {"n": 1}}]
    assert [doc["n"] for doc in coll.aggregate(pipeline)] == expected


def test_in_combined_with_eq_and_other_fields(coll: Collection):
    ids = ["APP-0000001", "APP-0000002", OID]
    assert ns(coll, {"_id": {"$in": ids}, "kind": "oid"}) == [8]
    assert ns(coll, {"_id": {"$in": ids, "$eq": "APP-0000002"}}) == [2]
    assert ns(coll, {"_id": {"$in": ids, "$eq": "APP-0000003"}}) == []
    assert ns(coll, {"_id": {"$in": ids, "$ne": "APP-0000001"}}) == [2, 8]
    assert ns(coll, {"_id": {"$nin": ids}, "kind": "string"}) == [3, 4, 5, 6]
    assert ns(coll, {"$and": [{"_id": {"$in": ids}}, {"n": {"$gt": 1}}]}) == [2, 8]


def test_update_and_delete_by_id(coll: Collection):
    result = coll.bulk_write(
        [
            UpdateOne({"_id": "APP-0000001"}, {"$set": {"status": "A"}}),
            UpdateOne({"_id": {"$eq": OID}}, {"$set": {"status": "B"}}),
            UpdateOne({"_id": 1}, {"$set": {"status": "C"}}),
            UpdateOne({"_id": DOC_ID}, {"$set": {"status": "D"}}),
            UpdateOne({"_id": ODD_STRING}, {"$set": {"status": "E"}}),
            UpdateOne({"_id": OID_HEX}, {"$set": {"status": "X"}}),
            UpdateOne({"_id": "APP-9999999"}, {"$set": {"status": "X"}}),
            UpdateOne({"_id": "APP-0000100"}, {"$set": {"status": "U"}}, upsert=True),
        ],
        ordered=False,
    )
    assert (result.matched_count, result.modified_count, result.upserted_count) == (5, 5, 1)
    statuses = {
        doc["n"]: doc["status"]
        for doc in coll.find({"status": {"$exists": True}, "n": {"$exists": True}})
    }
    assert statuses == {1: "A", 8: "B", 10: "C", 14: "D", 6: "E"}
    assert coll.find_one({"_id": "APP-0000100"}) == {"_id": "APP-0000100", "status": "U"}

    many = coll.update_many(
        {"_id": {"$in": ["APP-0000002", "APP-0000003", OID]}}, {"$inc": {"n": 100}}
    )
    assert (many.matched_count, many.modified_count) == (3, 3)
    assert ns(coll, {"_id": {"$in": ["APP-0000002", "APP-0000003", OID]}}) == [102, 103, 108]

    before = coll.find_one_and_update({"_id": OTHER_OID}, {"$set": {"status": "F"}})
    assert before is not None and before["n"] == 9
    assert coll.find_one({"_id": OTHER_OID})["status"] == "F"

    assert coll.delete_one({"_id": "APP-0000004"}).deleted_count == 1
    assert coll.delete_one({"_id": "APP-0000004"}).deleted_count == 0
    assert coll.delete_one({"_id": OID_HEX}).deleted_count == 0  # not the ObjectId
    deleted = coll.delete_many({"_id": {"$in": ["APP-0000005", ODD_STRING, 2, "APP-9999999"]}})
    assert deleted.deleted_count == 3
    assert coll.find_one({"_id": OID})["n"] == 108
    assert coll.count_documents({}) == len(DOCS) + 1 - 4
