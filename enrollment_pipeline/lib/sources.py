"""Where an input came from (a Kafka record or an archive line), one naming for every topic.

The source id is the dead letter's `_id` (Contract 2): `kafka:{topic}:{partition}:{offset}` or
`archive:{file}:{line}`; its fields are kept with stored events and dead letters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enrollment_pipeline.lib.clients.kafka import Record
from enrollment_pipeline.lib.mongo.dead_letters import DeadLetter


@dataclass(frozen=True)
class Source:
    """Where an input came from, kept with it in the store and in dead letters."""

    id: str
    fields: Mapping[str, Any]
    raw: bytes | None
    key: bytes | None
    # Set (lib/mongo/dead_letters.ERASURE) when the input names an erased applicant: its
    # letter keeps the size and hash of the bytes, not the bytes.
    withheld: str | None = None

    def letter(self, reason: str, detail: str) -> DeadLetter:
        """The dead letter of this input: kept whole (unless withheld), with why."""
        return DeadLetter(
            id=self.id,
            reason=str(reason),
            detail=detail,
            raw=self.raw,
            key=self.key,
            source=self.fields,
            raw_withheld=self.withheld,
        )


def kafka_source(record: Record) -> Source:
    return Source(
        id=f"kafka:{record.topic}:{record.partition}:{record.offset}",
        fields={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        raw=record.value,
        key=record.key,
    )


def archive_source(file: str, line: int, raw: bytes | None) -> Source:
    return Source(
        id=f"archive:{file}:{line}",
        fields={"file": file, "line": line},
        raw=raw,
        key=None,
    )
