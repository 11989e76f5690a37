"""What one input may be (its size, its instants) and how much of a bad one is kept: the same
limits for Kafka records, archive lines, lead records and re-driven dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from enrollment_pipeline.domain.events import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIME_BOUNDS,
    EnrollmentEvent,
    Rejection,
    TimeBounds,
    parse_archive_line,
    parse_record,
)
from enrollment_pipeline.domain.leads import LeadEvent, parse_lead_record
from enrollment_pipeline.lib.mongo.dead_letters import DEFAULT_MAX_RAW_BYTES


class _IngestLimits(Protocol):
    """INGEST_MAX_RECORD_BYTES, EVENT_TIME_MIN/MAX, DEAD_LETTER_MAX_RAW_BYTES: the settings
    group, or the settings resource (which keeps the instants as ISO strings)."""

    @property
    def ingest_max_record_bytes(self) -> int: ...
    @property
    def event_time_min(self) -> datetime | str: ...
    @property
    def event_time_max(self) -> datetime | str: ...
    @property
    def dead_letter_max_raw_bytes(self) -> int: ...


def _instant(value: datetime | str) -> datetime:
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    return instant.astimezone(UTC)


@dataclass(frozen=True)
class InputLimits:
    max_record_bytes: int = DEFAULT_MAX_BYTES
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS
    # Of a dead letter's input, the bytes kept (the size and a SHA-256 of all of it are too).
    max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES

    @classmethod
    def from_settings(cls, settings: _IngestLimits) -> InputLimits:
        return cls(
            max_record_bytes=settings.ingest_max_record_bytes,
            time_bounds=TimeBounds(
                _instant(settings.event_time_min), _instant(settings.event_time_max)
            ),
            max_raw_bytes=settings.dead_letter_max_raw_bytes,
        )

    def record(self, key: bytes | None, value: bytes | None) -> EnrollmentEvent | Rejection:
        return parse_record(
            key, value, max_bytes=self.max_record_bytes, time_bounds=self.time_bounds
        )

    def archive_line(self, raw: bytes) -> EnrollmentEvent | Rejection:
        return parse_archive_line(
            raw, max_bytes=self.max_record_bytes, time_bounds=self.time_bounds
        )

    def lead_record(self, key: bytes | None, value: bytes | None) -> LeadEvent | Rejection:
        return parse_lead_record(
            key, value, max_bytes=self.max_record_bytes, time_bounds=self.time_bounds
        )


DEFAULT_LIMITS = InputLimits()
