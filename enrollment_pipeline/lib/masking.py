"""No contact values by default: what the CLI prints of records has them masked.

Contact fields (names, email, phone, date of birth, address-like fields) are masked wherever
they appear in a record: the applicant and broker of an event, a lead's contact, a stored
document. Input that is not valid JSON (a dead letter's raw bytes) is masked as text: the
values of those fields, and anything that looks like an email address or a phone number.
Ids, types, times, statuses and the US state stay visible: support staff need them, and
they reach no one.
"""

from __future__ import annotations

import json
import re
from typing import Any

MASK = "***"

CONTACT_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "middle_name",
        "full_name",
        "name",
        "email",
        "broker_email",
        "phone",
        "mobile",
        "date_of_birth",
        "dob",
        "birth_date",
        "address",
        "address_line1",
        "address_line2",
        "street",
        "city",
        "zip",
        "zip_code",
        "postal_code",
    }
)

EMAIL = re.compile(r"[^\s@\"'<>(),;:\\]+@[^\s@\"'<>(),;:\\]+\.[A-Za-z]{2,}")
# 7 to 15 digits with the usual separators, not inside a longer token (ids, UUIDs).
PHONE = re.compile(r"(?<![\w.-])\+?\(?\d(?:[\s().-]{0,2}\d){6,14}(?![\w-])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FIELD_VALUE = re.compile(
    r'("(?:' + "|".join(sorted(CONTACT_FIELDS)) + r')"\s*:\s*)'
    r'("(?:[^"\\]|\\.)*"|[-+\w.]+)'
)


def mask_text(text: str) -> str:
    """Emails and phone numbers in free text (details, keys, broken JSON) masked."""
    text = EMAIL.sub(MASK, text)
    return PHONE.sub(lambda m: m.group(0) if _DATE.fullmatch(m.group(0)) else MASK, text)


def mask_record(value: Any) -> Any:
    """A copy of a JSON-like value with every contact field's value masked (None stays
    None, so an absent phone still shows as absent) and emails in other strings masked."""
    if isinstance(value, dict):
        return {
            key: (_masked_value(item) if str(key).lower() in CONTACT_FIELDS else mask_record(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_record(item) for item in value]
    if isinstance(value, str):
        return EMAIL.sub(MASK, value)
    return value


def _masked_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict | list):  # e.g. an address object: keep its shape
        return mask_record(value) if isinstance(value, list) else dict.fromkeys(value, MASK)
    return MASK


def mask_raw(raw: str) -> str:
    """Raw input as text with contact values masked: structurally when it is one JSON
    object or array without duplicate keys (re-serialized compactly), else as text."""
    try:
        parsed = json.loads(raw, object_pairs_hook=_no_duplicates)
    except ValueError:
        return mask_text(_FIELD_VALUE.sub(lambda m: f'{m.group(1)}"{MASK}"', raw))
    return json.dumps(mask_record(parsed), ensure_ascii=False)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys: masked as text, so every copy is masked")
    return dict(pairs)
