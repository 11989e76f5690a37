"""Contract 3, the email job's side: what a due follow-up gets at `as_of`, and the email.

Pure: no Mongo, SMTP or Dagster. The fold owns whether a signature is required; these rules
own the retries, the escalation to PENDING and the email's content.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from enrollment_pipeline.domain.events import to_utc

# Reasons a follow-up becomes PENDING (a person must act), kept in `pending_reason`.
EXPIRED = "expired"
MAX_EMAILS_REACHED = "max_emails_reached"
RECIPIENT_REJECTED = "recipient_rejected"
INVALID_ADDRESS = "invalid_address"  # the message cannot be built or the server cannot take it

# CR, LF and every other control character: nothing that could end a header line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


@dataclass(frozen=True)
class FollowupPolicy:
    max_emails: int = 5
    interval: timedelta = timedelta(minutes=60)
    max_age: timedelta = timedelta(days=30)
    # UTC hours [start, end) in which brokers get no email, e.g. (20, 7); None: no quiet hours.
    quiet_hours: tuple[int, int] | None = None

    def is_quiet(self, at: datetime) -> bool:
        if self.quiet_hours is None:
            return False
        start, end = self.quiet_hours
        hour = to_utc(at).hour
        return start <= hour < end if start <= end else hour >= start or hour < end


def parse_quiet_hours(text: str | None) -> tuple[int, int] | None:
    """`"20-07"` → (20, 7): UTC hours, the end excluded; empty or None: no quiet hours."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", text)
    if not match or not all(0 <= int(h) <= 23 for h in match.groups()):
        raise ValueError(f"FOLLOWUP_QUIET_HOURS must look like 20-07 (UTC hours), not {text!r}")
    start, end = (int(h) for h in match.groups())
    return None if start == end else (start, end)


class Action(StrEnum):
    SEND = "send"
    ESCALATE = "escalate"  # PENDING: too many unanswered emails
    EXPIRE = "expire"  # PENDING: the application is too old to mail its broker about
    WAIT = "wait"  # quiet hours: due again after them


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None
    attempt: int | None = None  # counts every attempt of the application, never resets

    def attempt_key(self, followup: Mapping[str, Any]) -> str:
        """`{app_id}:{broker_id}:{attempt}`: the claim that makes an attempt happen once."""
        return f"{followup['_id']}:{followup['broker_id']}:{self.attempt}"


def decide(followup: Mapping[str, Any], *, as_of: datetime, policy: FollowupPolicy) -> Decision:
    """What a due follow-up (awaiting signature, `next_due_at` <= `as_of`) gets now."""
    submitted_at = followup.get("submitted_at") or followup["cycle_started_at"]
    if to_utc(as_of) - to_utc(submitted_at) > policy.max_age:
        return Decision(Action.EXPIRE, EXPIRED)
    if followup.get("retry_count", 0) >= policy.max_emails:
        return Decision(Action.ESCALATE, MAX_EMAILS_REACHED)
    if policy.is_quiet(as_of):
        return Decision(Action.WAIT)
    return Decision(Action.SEND, attempt=followup.get("attempt_count", 0) + 1)


def header_safe(value: str) -> str:
    """One line of text: control characters (CR/LF above all) become single spaces."""
    return _CONTROL.sub(" ", value).strip()


@dataclass(frozen=True)
class FollowupEmail:
    to: str
    to_name: str
    subject: str
    text: str
    html: str


def followup_email(
    followup: Mapping[str, Any],
    application: Mapping[str, Any] | None,
    *,
    attempt_in_cycle: int,
    max_emails: int,
) -> FollowupEmail:
    """The email to the broker: who, which application, what to do, attempt n of max.

    Only the applicant's first name and the product leave the system (no contact data).
    """
    app_id = header_safe(str(followup["_id"]))
    broker = (application or {}).get("broker") or {}
    broker_name = header_safe(str(broker.get("name") or "broker"))
    first_name = header_safe(
        str(((application or {}).get("applicant") or {}).get("first_name") or "")
    )
    product = header_safe(
        str(((application or {}).get("plan") or {}).get("product") or "insurance")
    )
    applicant = f"{first_name}'s" if first_name else "the"
    subject = f"Signature needed: {applicant} {product.lower()} application {app_id}"
    lines = [
        f"Hello {broker_name},",
        "",
        f"{applicant[0].upper()}{applicant[1:]} {product.lower()} application {app_id} is "
        "waiting for your broker signature.",
        "Please review the application and sign it in the broker portal, so that it can be "
        "approved.",
        "",
        f"This is reminder {attempt_in_cycle} of {max_emails}. After {max_emails} reminders "
        "the application is handed to our operations team.",
    ]
    text = "\n".join(lines) + "\n"
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    return FollowupEmail(
        to=str(followup["broker_email"]),
        to_name=broker_name,
        subject=header_safe(subject),
        text=text,
        html=f"<html><body>{body}</body></html>",
    )


def pending_digest(newly_pending: list[tuple[str, str]], *, as_of: datetime) -> tuple[str, str]:
    """Subject and text of the one email to OPS_EMAIL about applications that went PENDING."""
    subject = (
        f"{len(newly_pending)} broker follow-ups need a person ({to_utc(as_of):%Y-%m-%d %H:%M} UTC)"
    )
    text = "These applications went PENDING in this run (application id: reason):\n\n" + "".join(
        f"  {header_safe(app_id)}: {reason}\n" for app_id, reason in sorted(newly_pending)
    )
    return subject, text
