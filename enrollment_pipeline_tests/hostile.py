"""A corpus of hostile records, by class, as real upstream systems send them on a bad day.

Each record carries the class it belongs to and the outcome the pipeline owes it: the dead-letter
reason, or `stored` (a valid event, however odd) or `duplicate` (an exact copy of an earlier
record). Used by the fuzz test through the sensor and the job, and by the hostile-input
benchmark, which times the same stream against a clean one of the same size.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from enrollment_pipeline_tests import factories as f

STORED, DUPLICATE = "stored", "duplicate"


@dataclass(frozen=True)
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None
    expect: str  # a RejectReason value, or STORED / DUPLICATE


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _approved(app_id: str, minutes: float, **envelope: Any) -> dict[str, Any]:
    return {**f.event("ApplicationApproved", app_id, minutes), **envelope}


def corpus(
    seed: int = 7, *, per_kind: int = 40, heavy: int = 5, limit: int = 900_000
) -> list[Hostile]:
    """At least `per_kind` records of every class (more for the classes with variants), but
    `heavy` of the classes near the record size `limit` (INGEST_MAX_RECORD_BYTES: keep it
    under the broker's own limit of about 1 MB, so the oversized ones can be produced)."""
    rng = random.Random(seed)
    out: list[Hostile] = []

    def add(kind: str, app_id: str | None, value: bytes | None, expect: str) -> None:
        out.append(Hostile(kind, app_id.encode() if app_id else None, value, expect))

    for i in range(per_kind):
        app = f"APP-H{i:04d}"
        good = f.submitted(app, i)
        raw = _dumps(good)
        # Truncations at any point of a valid event.
        add("truncated", app, raw[: rng.randrange(1, len(raw) - 1)], "invalid_json")
        # Invalid UTF-8 inside a valid-looking JSON string.
        add("invalid_utf8", app, raw.replace(b"Jane", b"J\xff\xfene", 1), "invalid_utf8")
        add("invalid_utf8", app, b"\xc3\x28" + raw, "invalid_utf8")
        # A BOM before the object.
        add("bom", app, b"\xef\xbb\xbf" + raw, "invalid_json")
        # NaN / Infinity literals.
        add(
            "nan",
            app,
            raw.replace(b'"marketing_consent": true', b'"marketing_consent": NaN', 1),
            "invalid_json",
        )
        add("nan", app, raw[:-1] + b', "premium": -Infinity}', "invalid_json")
        # A key given twice.
        add("duplicate_keys", app, raw[:-1] + b', "event_id": "other"}', "invalid_json")
        # Deep nesting (parsers give up on recursion).
        deep = b'{"event_id": "x", "payload": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
        add("deep_nesting", app, deep, "invalid_json")
        # Lone surrogates, as a JSON escape.
        add(
            "lone_surrogate",
            app,
            raw.replace(b'"Jane"', b'"J\\ud800ne"', 1),
            "invalid_json",
        )
        # Wrong types and enums.
        for path, value in (
            ("event_id", 12345),
            ("payload.marketing_consent", "true"),
            ("payload.applicant.first_name", ["Jane"]),
            ("payload.plan.product", "PET"),
            ("payload.channel", "FAX"),
            ("payload", []),
        ):
            doc = copy.deepcopy(good)
            node = doc
            *parents, leaf = path.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
            add("wrong_type_or_enum", app, _dumps(doc), "schema_violation")
        add(
            "wrong_type_or_enum",
            app,
            _dumps({**good, "schema_version": "1"}),
            "unsupported_schema_version",
        )
        add(
            "unknown_event_type",
            app,
            _dumps({**good, "event_type": "ApplicationReopened"}),
            "unknown_event_type",
        )
        add(
            "unsupported_schema_version",
            app,
            _dumps({**good, "schema_version": 2}),
            "unsupported_schema_version",
        )
        # Missing fields.
        for field in ("event_id", "occurred_at", "application_id", "payload"):
            add(
                "missing_field",
                app,
                _dumps({k: v for k, v in good.items() if k != field}),
                "schema_violation",
            )
        # Not an object at all.
        for value in (b"[]", b'"ApplicationSubmitted"', b"42", b"null", b"true"):
            add("not_an_object", app, value, "schema_violation")
        add("empty", app, b"", "invalid_json")
        # Instants at and past the edges of what a datetime holds, or of EVENT_TIME_MIN/MAX.
        for instant in (
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
            "1899-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-26T24:00:00Z",
        ):
            add(
                "edge_instant",
                app,
                _dumps(_approved(app, i, occurred_at=instant)),
                "schema_violation",
            )
        signed = f.event(
            "BrokerSignatureReceived",
            app,
            i,
            {"broker_id": "BRK-A", "signed_at": "9999-12-31T23:59:59-01:00"},
        )
        add("edge_instant", app, _dumps(signed), "schema_violation")
        if i < heavy:
            # Huge ids and strings, each under the record limit; and records over it.
            add(
                "huge_id",
                app,
                _dumps(_approved(app, i, event_id="E" * (limit - 4_000))),
                "schema_violation",
            )
            big = copy.deepcopy(good)
            big["payload"]["applicant"]["last_name"] = "D" * (limit // 2)
            add("huge_string", app, _dumps(big), "schema_violation")
            add("oversized", app, _dumps({**good, "padding": "x" * (limit + 1)}), "oversized")
            out.append(Hostile("huge_key", b"K" * (limit // 4), raw, "key_mismatch"))
        # The key does not say which application this is.
        add("null_key", None, raw, "null_key")
        add("key_mismatch", f"APP-OTHER-{i}", raw, "key_mismatch")
        add(
            "key_mismatch", app, _dumps({**good, "application_id": f"APP-ELSE-{i}"}), "key_mismatch"
        )
        # Valid events with odd values: stored, and the fold takes them as they are.
        odd = copy.deepcopy(good)
        odd["payload"]["broker"] = {
            "broker_id": f"BRK-ODD-{i}",
            "name": "Odd \u202e Broker \U0001f600",
            "email": rng.choice(
                ["a,b@example.test", '"a@example.test', "jürgen@example.test", "x@exämple.test"]
            ),
        }
        odd["payload"]["applicant"]["first_name"] = "Zoë\u200b\u202e"
        add("odd_but_valid", app, _dumps(odd), STORED)
        nul = copy.deepcopy(good)
        nul["payload"]["applicant"]["last_name"] = "Do\u0000e"
        add("nul_character", app, _dumps(nul), "schema_violation")
        # An exact copy of that record (a producer retry), and the same id with other content.
        add("exact_duplicate", app, _dumps(odd), DUPLICATE)
        other = copy.deepcopy(odd)
        other["payload"]["plan"]["product"] = "LIFE"
        add("conflicting_duplicate", app, _dumps(other), "conflicting_duplicate")
    return out


def by_kind(records: list[Hostile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.kind] = counts.get(record.kind, 0) + 1
    return counts


def interleaved(
    good: list[tuple[bytes | None, bytes]], hostile: list[Hostile], seed: int = 11
) -> Iterator[tuple[bytes | None, bytes | None, str | None]]:
    """The good stream with the hostile records spread through it, each keeping its order
    relative to the records of its own key (so an exact duplicate comes after its original)."""
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(good) + 1) for _ in hostile)
    h = 0
    for index, (key, value) in enumerate(good):
        while h < len(hostile) and slots[h] <= index:
            yield hostile[h].key, hostile[h].value, hostile[h].kind
            h += 1
        yield key, value, None
    for record in hostile[h:]:
        yield record.key, record.value, record.kind
