"""The raw limits of the read model's store, the ceilings the pipeline's figures are read against.

  insert_many   documents/s of `insert_many` in chunks of 1,000 application-like documents
                (~1 KB) into a fresh collection: what a backfill's and a rebuild's writes cost
  find          documents/s of one streamed `find` over a collection of them (batches of 1,000):
                what a rebuild's read of the event store costs
  UpdateOne     statements/s of `bulk_write` of `UpdateOne({_id}, {$set})` on existing
                documents, in commands of `--per-command` statements, with 1 command at a time
                and with `--in-flight` commands at once (threads, one connection each): what
                the stream's writes cost

Run against the local stack (or any MongoDB-wire server):
    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/raw_limits.py
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ferretdb_engines import make_doc
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection

from enrollment_pipeline.settings import MongoSettings

TIMEOUT_MS = 600_000  # a raw measure is allowed to be slow; it is never allowed to hang


def _client(uri: str) -> MongoClient:
    return MongoClient(
        uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=TIMEOUT_MS, connectTimeoutMS=10_000
    )


def _load(collection: Collection, documents: int, seed: int) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    for start in range(0, documents, 1_000):
        collection.insert_many(
            [make_doc(i, rng) for i in range(start, min(documents, start + 1_000))],
            ordered=False,
        )
    return time.perf_counter() - started


def insert_many_rate(uri: str, documents: int = 20_000, seed: int = 7) -> float:
    """Documents/s of insert_many into a fresh collection (building the documents excluded)."""
    rng = random.Random(seed)
    chunks = [
        [make_doc(i, rng) for i in range(start, min(documents, start + 1_000))]
        for start in range(0, documents, 1_000)
    ]
    database = f"raw_{uuid.uuid4().hex[:8]}"
    with _client(uri) as client:
        try:
            collection = client[database]["documents"]
            started = time.perf_counter()
            for chunk in chunks:
                collection.insert_many(chunk, ordered=False)
            return documents / (time.perf_counter() - started)
        finally:
            client.drop_database(database)


def find_rate(uri: str, documents: int = 20_000, seed: int = 7) -> float:
    """Documents/s of one streamed `find({})` over `documents` application-like documents."""
    database = f"raw_{uuid.uuid4().hex[:8]}"
    with _client(uri) as client:
        try:
            collection = client[database]["documents"]
            _load(collection, documents, seed)
            started = time.perf_counter()
            read = sum(1 for _ in collection.find({}).batch_size(1_000))
            return read / (time.perf_counter() - started)
        finally:
            client.drop_database(database)


def update_rate(
    uri: str,
    *,
    documents: int = 20_000,
    statements: int = 6_000,
    per_command: int = 10,
    in_flight: int = 1,
    seed: int = 7,
) -> float:
    """Statements/s of UpdateOne by _id in commands of `per_command`, `in_flight` at once."""
    database = f"raw_{uuid.uuid4().hex[:8]}"
    clients = [_client(uri) for _ in range(in_flight)]
    try:
        _load(clients[0][database]["documents"], documents, seed)
        rng = random.Random(seed + 1)
        ids = rng.sample(range(documents), min(statements, documents))
        commands = [
            [
                UpdateOne({"_id": f"APP-{i:07d}"}, {"$set": {"status": "IN_REVIEW", "version": 2}})
                for i in ids[start : start + per_command]
            ]
            for start in range(0, len(ids), per_command)
        ]

        def send(lane: int) -> None:
            collection = clients[lane][database]["documents"]
            for command in commands[lane::in_flight]:
                collection.bulk_write(command, ordered=False)

        started = time.perf_counter()
        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(send, range(in_flight)))
        return len(ids) / (time.perf_counter() - started)
    finally:
        clients[0].drop_database(database)
        for client in clients:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=None, help="default: MONGO_URI")
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--statements", type=int, default=6_000)
    parser.add_argument("--per-command", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=3)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    uri = args.uri or MongoSettings().mongo_uri
    inserts = insert_many_rate(uri, args.documents)
    print(f"insert_many (chunks of 1,000)      {inserts:>9,.0f} docs/s")
    print(f"find, streamed (batches of 1,000)  {find_rate(uri, args.documents):>9,.0f} docs/s")
    for lanes in sorted({1, args.in_flight}):
        rate = update_rate(
            uri,
            documents=args.documents,
            statements=args.statements,
            per_command=args.per_command,
            in_flight=lanes,
        )
        print(
            f"UpdateOne, commands of {args.per_command}, {lanes} in flight "
            f"{rate:>9,.0f} statements/s"
        )


if __name__ == "__main__":
    main()
