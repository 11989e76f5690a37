"""Every multi-document write of the pipeline, and every `$in` read, split into commands a
server can take.

FerretDB v1 on PostgreSQL holds one backend pool connection per update statement until the
whole command ends; an update command with more statements than the pool has connections
(`pool_max_conns`, 50 by default) waits for a connection that never comes, and from then on
the server answers nothing, `ping` included. The limit is shared by every client at once.
So updates go out in commands of at most `updates_per_command` statements, small enough
for several jobs writing together; MongoDB has no such limit and keeps large commands.
Inserts of new documents do not hold connections that way, but are chunked too, so no single
command runs longer than the client's timeout. (pymongo itself splits a bulk write whose
documents exceed the 48 MB message limit; each document stays far below 16 MB because every
field of an event is bounded.) A query's filter is one document, so a `$in` over a batch's ids
goes in pieces of at most `IN_MAX_IDS` ids and `IN_MAX_BYTES` bytes (`in_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError
from pymongo.operations import DeleteOne, ReplaceOne, UpdateMany, UpdateOne

DUPLICATE_KEY = 11000

# Defaults by engine (MONGO_MAX_WRITES_PER_COMMAND overrides them). On FerretDB: four
# concurrent writers of 10 statements each stay under its default pool of 50, with room for
# pings and reads (benchmarks/README.md has the measurements behind these numbers).
FERRETDB_UPDATES_PER_COMMAND = 10
MONGODB_UPDATES_PER_COMMAND = 1_000
# Commands one writer keeps in flight (MONGO_WRITE_COMMANDS_IN_FLIGHT overrides): on FerretDB
# three commands of 10 statements hold at most 30 backend connections of its pool of 200.
FERRETDB_COMMANDS_IN_FLIGHT = 3
MONGODB_COMMANDS_IN_FLIGHT = 1
INSERTS_PER_COMMAND = 1_000

# Of one `$in` filter: far below MongoDB's 16 MB document limit, whatever the ids.
IN_MAX_IDS = 10_000
IN_MAX_BYTES = 2 * 1024 * 1024

WriteOp = UpdateOne | ReplaceOne[dict[str, Any]] | UpdateMany | DeleteOne
T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_chunks(
    ids: Iterable[str], *, max_ids: int = IN_MAX_IDS, max_bytes: int = IN_MAX_BYTES
) -> Iterator[list[str]]:
    """Distinct `ids` in lists of at most `max_ids` ids and about `max_bytes` of UTF-8, each
    small enough to be one `{"$in": [...]}` filter."""
    chunk: list[str] = []
    size = 0
    for value in dict.fromkeys(ids):
        cost = len(value.encode("utf-8", "surrogatepass")) + 16  # BSON element overhead
        if chunk and (len(chunk) >= max_ids or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += cost
    if chunk:
        yield chunk


def _unguarded() -> None:
    return None


@dataclass(frozen=True)
class BoundedWriter:
    """Splits bulk writes into commands of a bounded number of statements; `guard` runs
    before each command (the writers' lease checks it still holds, or raises)."""

    updates_per_command: int = FERRETDB_UPDATES_PER_COMMAND
    inserts_per_command: int = INSERTS_PER_COMMAND
    guard: Callable[[], None] = _unguarded
    # Update commands in flight at once: FerretDB serves each on its own backend connection
    # and core, so a few at a time keep the server busy while this process prepares the next.
    commands_in_flight: int = 1

    def __post_init__(self) -> None:
        if min(self.updates_per_command, self.inserts_per_command, self.commands_in_flight) < 1:
            raise ValueError("statements per command and commands in flight must be at least 1")

    def bulk_write(self, collection: Collection[dict[str, Any]], ops: Sequence[WriteOp]) -> int:
        """Apply `ops` (unordered, each on its own document) in bounded commands, up to
        `commands_in_flight` at once; returns the number of commands. The first error raises
        once every command in flight has ended."""
        pieces = list(chunks(list(ops), self.updates_per_command))

        def command(chunk: Sequence[WriteOp]) -> None:
            self.guard()
            collection.bulk_write(list(chunk), ordered=False)

        if self.commands_in_flight == 1 or len(pieces) < 2:
            for chunk in pieces:
                command(chunk)
            return len(pieces)
        with ThreadPoolExecutor(self.commands_in_flight, thread_name_prefix="mongo-write") as pool:
            for done in [pool.submit(command, chunk) for chunk in pieces]:
                done.result()
        return len(pieces)

    def insert_new(
        self, collection: Collection[dict[str, Any]], docs: Sequence[dict[str, Any]]
    ) -> int:
        """Insert documents, skipping those whose `_id` exists (code 11000 only).

        Returns how many were inserted. A duplicate is how a rerun finds its own earlier
        work, so it is not an error; any other write error is.
        """
        inserted = 0
        for chunk in chunks(list(docs), self.inserts_per_command):
            self.guard()
            try:
                inserted += len(collection.insert_many(list(chunk), ordered=False).inserted_ids)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error.get("code") != DUPLICATE_KEY for error in errors):
                    raise
                inserted += exc.details.get("nInserted", len(chunk) - len(errors))
        return inserted
