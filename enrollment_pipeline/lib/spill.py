"""Records grouped by application across a run too large to hold, on disk in hashed shards.

A single-run backfill or rebuild sees every event of its range before it folds: it writes them
here (one JSON line each, under the shard its application id hashes to) and folds shard by
shard, so an application's events are all in one shard and memory holds one group of shards,
whatever the range's size. The files live in a temporary folder the caller owns.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FLUSH_BYTES = 1 << 20


class Spill:
    def __init__(self, folder: Path, *, shards: int = 64) -> None:
        self.folder, self.count = folder, shards
        self._pending: list[list[str]] = [[] for _ in range(shards)]
        self._pending_bytes = [0] * shards
        self.records = 0

    def _path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:03d}.jsonl"

    def add(self, application_id: str, record: dict[str, Any]) -> None:
        shard = zlib.crc32(application_id.encode("utf-8")) % self.count
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        self._pending[shard].append(line)
        self._pending_bytes[shard] += len(line)
        self.records += 1
        if self._pending_bytes[shard] >= _FLUSH_BYTES:
            self._flush(shard)

    def _flush(self, shard: int) -> None:
        if self._pending[shard]:
            with self._path(shard).open("a", encoding="utf-8") as out:
                out.write("\n".join(self._pending[shard]) + "\n")
            self._pending[shard], self._pending_bytes[shard] = [], 0

    def groups(self, *, max_records: int) -> Iterator[list[dict[str, Any]]]:
        """The records, a group of whole shards at a time (about `max_records` each)."""
        for shard in range(self.count):
            self._flush(shard)
        group: list[dict[str, Any]] = []
        for shard in range(self.count):
            path = self._path(shard)
            if not path.exists():
                continue
            with path.open(encoding="utf-8") as lines:
                group.extend(json.loads(line) for line in lines)
            path.unlink()
            if len(group) >= max_records:
                yield group
                group = []
        if group:
            yield group


def by_application(
    records: list[dict[str, Any]], key: str = "a"
) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record[key]].append(record)
    return grouped
