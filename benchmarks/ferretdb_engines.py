"""How fast the read model's `_id` access patterns run on one MongoDB-wire server.

Compares storage engines (stock FerretDB on PostgreSQL, FerretDB built with the `_id`
pushdown patches of `enrollment_pipeline/stack/patches/`, FerretDB on SQLite, MongoDB): run it
once per server and size, and read the table lines side by side.

It loads N application-like documents (~1 KB, string `_id`s like "APP-0000123") into a fresh
database, then times:

  find_one     one `find_one({_id: ...})` of an existing id (median of --find-one-repeats, ms)
  $in          one `find({_id: {$in: [5,000 ids]}})`, drained (s); ids are existing ones when
               N >= 5,000, else all N plus missing ones
  bulk upd     `bulk_write` of 40 `UpdateOne({_id}, {$set})` on existing documents, repeated
               --bulk-repeats times (statements/s)
  insert 10k   one `insert_many` of 10,000 new documents (s)

With --big-bulk M it also sends one `bulk_write` of M `UpdateOne`s on existing documents and
reports its time, or "timeout" when the server does not answer within --big-bulk-timeout-s
(stock FerretDB v1 holds one PostgreSQL connection per update statement until the command
ends, so M >= its pool size, 50 by default, never finishes).

Every client has socket and server-selection timeouts, so nothing waits forever. The database
is dropped at the end unless --keep.

Example:
    .venv/bin/python benchmarks/ferretdb_engines.py --uri mongodb://127.0.0.1:27017/ \\
        --documents 10000 --label mongod
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import time

from pymongo import MongoClient, UpdateOne
from pymongo.errors import PyMongoError

HEADER = (
    "| engine | docs | find_one by _id (ms) | find $in 5,000 _ids (s) | "
    "bulk 40 UpdateOne (stmts/s) | insert_many 10,000 (s) | big bulk |"
)
RULE = "|---|---:|---:|---:|---:|---:|---|"


def app_id(i: int) -> str:
    return f"APP-{i:07d}"


def make_doc(i: int, rng: random.Random) -> dict:
    """An application read-model document of about 1 KB."""
    return {
        "_id": app_id(i),
        "status": rng.choice(["SUBMITTED", "IN_REVIEW", "APPROVED", "DECLINED"]),
        "broker_id": f"BRK-{rng.randrange(500):04d}",
        "broker_followup_status": rng.choice(["NONE", "PENDING", "SENT"]),
        "applicant": {
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "email": f"applicant{i}@example.com",
            "phone": f"+1-555-{rng.randrange(10_000_000):07d}",
            "address": {
                "line1": f"{rng.randrange(1, 9999)} Main Street",
                "city": "Springfield",
                "state": "IL",
                "zip": f"{rng.randrange(100_000):05d}",
            },
        },
        "plan": {
            "code": f"PLAN-{rng.randrange(40):02d}",
            "premium": round(rng.uniform(50, 900), 2),
        },
        "events": [
            {
                "event_id": f"EV-{i}-{k}",
                "type": "STATUS_CHANGED",
                "at": f"2026-01-{k + 1:02d}T10:00:00Z",
            }
            for k in range(3)
        ],
        "notes": "x" * 420,
        "version": 1,
    }


def load(coll, n: int, seed: int) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    for start in range(0, n, 1_000):
        coll.insert_many([make_doc(i, rng) for i in range(start, min(n, start + 1_000))])
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> str:
    timeout_ms = int(args.timeout_s * 1000)
    client: MongoClient = MongoClient(
        args.uri, serverSelectionTimeoutMS=5_000, socketTimeoutMS=timeout_ms, connectTimeoutMS=5_000
    )
    db_name = args.database or f"bench_{args.label}_{args.documents}".replace("-", "_").replace(
        ".", "_"
    )
    client.drop_database(db_name)
    coll = client[db_name]["applications"]
    n = args.documents
    rng = random.Random(7)
    try:
        load_s = load(coll, n, seed=1)
        print(f"# {args.label}: loaded {n:,} documents in {load_s:.1f} s", file=sys.stderr)

        # find_one by _id
        times = []
        for _ in range(args.find_one_repeats):
            target = app_id(rng.randrange(n))
            t0 = time.perf_counter()
            doc = coll.find_one({"_id": target})
            times.append(time.perf_counter() - t0)
            assert doc is not None and doc["_id"] == target
        find_one_ms = statistics.median(times) * 1000

        # find with $in of 5,000 ids
        if n >= 5_000:
            ids = [app_id(i) for i in rng.sample(range(n), 5_000)]
            expected = 5_000
        else:
            ids = [app_id(i) for i in range(n)] + [
                app_id(n + 10_000_000 + k) for k in range(5_000 - n)
            ]
            expected = n
        t0 = time.perf_counter()
        found = sum(1 for _ in coll.find({"_id": {"$in": ids}}, batch_size=10_000))
        in_s = time.perf_counter() - t0
        assert found == expected, (found, expected)

        # bulk_write of 40 UpdateOne by _id
        statements = 0
        t0 = time.perf_counter()
        for r in range(args.bulk_repeats):
            ops = [
                UpdateOne({"_id": app_id(i)}, {"$set": {"status": "IN_REVIEW", "version": r + 2}})
                for i in rng.sample(range(n), 40)
            ]
            result = coll.bulk_write(ops, ordered=False)
            assert result.matched_count == 40, result.bulk_api_result
            statements += 40
        bulk_rate = statements / (time.perf_counter() - t0)

        # insert_many of 10,000 new documents
        new_docs = [make_doc(i, rng) for i in range(n, n + 10_000)]
        t0 = time.perf_counter()
        coll.insert_many(new_docs)
        insert_s = time.perf_counter() - t0

        big = "-"
        if args.big_bulk:
            big_client: MongoClient = MongoClient(
                args.uri,
                serverSelectionTimeoutMS=5_000,
                socketTimeoutMS=int(args.big_bulk_timeout_s * 1000),
                retryWrites=False,
            )
            ops = [
                UpdateOne({"_id": app_id(i)}, {"$set": {"status": "APPROVED"}})
                for i in rng.sample(range(n), min(args.big_bulk, n))
            ]
            t0 = time.perf_counter()
            try:
                result = big_client[db_name]["applications"].bulk_write(ops, ordered=False)
                elapsed = time.perf_counter() - t0
                big = f"{len(ops)} ops: {elapsed:.2f} s (matched {result.matched_count})"
            except PyMongoError as exc:
                elapsed = time.perf_counter() - t0
                big = f"{len(ops)} ops: no answer after {elapsed:.0f} s ({type(exc).__name__})"
            finally:
                big_client.close()  # closing the socket cancels the command on the server
    finally:
        if not args.keep:
            try:
                client.drop_database(db_name)
            except PyMongoError as exc:
                print(f"# could not drop {db_name}: {exc}", file=sys.stderr)
        client.close()

    return (
        f"| {args.label} | {n:,} | {find_one_ms:.2f} | {in_s:.2f} | {bulk_rate:,.0f} | "
        f"{insert_s:.2f} | {big} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--uri", required=True, help="MongoDB-wire server, e.g. mongodb://127.0.0.1:27017/"
    )
    parser.add_argument("--documents", type=int, default=10_000, help="documents loaded first")
    parser.add_argument("--label", default="server", help="engine name for the table line")
    parser.add_argument(
        "--database", help="database to use (dropped first); default bench_<label>_<N>"
    )
    parser.add_argument("--find-one-repeats", type=int, default=50)
    parser.add_argument("--bulk-repeats", type=int, default=5)
    parser.add_argument(
        "--big-bulk", type=int, default=0, help="also one bulk_write of this many UpdateOne"
    )
    parser.add_argument("--big-bulk-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="socket timeout of every command"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args()
    if args.documents < 40:
        parser.error("--documents must be at least 40")
    line = measure(args)
    if args.header:
        print(HEADER)
        print(RULE)
    print(line)
    print(f"# reproduce: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
