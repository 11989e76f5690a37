"""The bounded write helper: how it splits commands and which insert errors it forgives.

(The real servers' side of it is in integration/test_mongo_under_load.py.)
"""

from __future__ import annotations

import pytest
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from enrollment_pipeline.lib.mongo.writes import BoundedWriter


class RecordingCollection:
    """Records the commands it is sent; `insert_many` refuses the `_id`s in `existing`."""

    def __init__(self, existing: set[str] = frozenset(), other_error: bool = False) -> None:
        self.commands: list[int] = []
        self.existing, self.other_error = existing, other_error

    def bulk_write(self, ops, ordered):
        assert ordered is False
        self.commands.append(len(ops))

    def insert_many(self, docs, ordered):
        self.commands.append(len(docs))
        errors = [
            {"index": i, "code": 11000} for i, d in enumerate(docs) if d["_id"] in self.existing
        ]
        if self.other_error:
            errors.append({"index": 0, "code": 121})
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(docs) - len(errors)})
        return type("Result", (), {"inserted_ids": [d["_id"] for d in docs]})()


def test_updates_go_out_in_commands_of_the_limit():
    collection = RecordingCollection()
    ops = [UpdateOne({"_id": i}, {"$set": {"v": 1}}) for i in range(25)]
    assert BoundedWriter(updates_per_command=10).bulk_write(collection, ops) == 3
    assert collection.commands == [10, 10, 5]


def test_no_statement_no_command():
    collection = RecordingCollection()
    assert BoundedWriter().bulk_write(collection, []) == 0
    assert BoundedWriter().insert_new(collection, []) == 0
    assert collection.commands == []


def test_inserts_skip_existing_ids_in_every_chunk():
    collection = RecordingCollection(existing={"a1", "a5"})
    docs = [{"_id": f"a{i}"} for i in range(7)]
    assert BoundedWriter(inserts_per_command=3).insert_new(collection, docs) == 5
    assert collection.commands == [3, 3, 1]


def test_an_insert_error_other_than_a_duplicate_is_raised():
    collection = RecordingCollection(existing={"a1"}, other_error=True)
    with pytest.raises(BulkWriteError):
        BoundedWriter().insert_new(collection, [{"_id": "a0"}, {"_id": "a1"}])


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        BoundedWriter(updates_per_command=0)
