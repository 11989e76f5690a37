"""The CRM / lead-management REST client (Contract 4).

POST `{base_url}/leads` with `Idempotency-Key: lead_event_id` and a bearer token. 2xx and 409
mean delivered; 429, 5xx, connection errors and timeouts are retried with capped exponential
backoff and full jitter, honouring `Retry-After`, until the attempts or the caller's deadline
run out; any other 4xx is permanent (the caller dead-letters it). Retrying is safe because the
CRM deduplicates on the idempotency key. Nothing here logs the token or the lead's contact.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

from enrollment_pipeline.settings import CrmSettings

Outcome = Literal["delivered", "rejected", "exhausted", "out_of_time"]
_EMAIL = re.compile(r"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+")
_EXCERPT = 300


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one lead: `delivered`; `rejected` (a permanent 4xx); `exhausted` (every
    attempt failed transiently); `out_of_time` (the run's deadline came first)."""

    outcome: Outcome
    status: int | None  # the last HTTP status; None when no answer came
    detail: str  # status and a body excerpt, contact values redacted
    attempts: int
    latencies_s: tuple[float, ...]

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def retry_after_seconds(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def redacted_excerpt(text: str, lead: Mapping[str, Any]) -> str:
    """A short excerpt of a CRM answer without the lead's contact values or any email address
    (CRMs echo the offending field back; dead letters and logs must not carry it)."""
    excerpt = text[: _EXCERPT * 2]
    contact = lead.get("contact") or {}
    for value in sorted((str(v) for v in contact.values() if v), key=len, reverse=True):
        excerpt = excerpt.replace(value, "[redacted]")
    excerpt = _EMAIL.sub("[redacted]", excerpt)
    return excerpt[:_EXCERPT]


@dataclass(frozen=True)
class CrmClient:
    """LEAD_API_URL, LEAD_API_TOKEN and the retry policy of one lead."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # A Retry-After beyond this is cut to it: the run's deadline bounds the wait anyway.
    retry_after_max_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: CrmSettings) -> CrmClient:
        """The one mapping from the environment's variables to a client."""
        token = settings.lead_api_token
        return cls(
            base_url=settings.lead_api_url,
            token=token.get_secret_value() if token else None,
            connect_timeout_s=settings.lead_api_connect_timeout_seconds,
            read_timeout_s=settings.lead_api_read_timeout_seconds,
            max_attempts=settings.lead_api_max_attempts,
        )

    def session(self) -> requests.Session:
        """One keep-alive session per worker thread (requests sessions are not thread-safe)."""
        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def _backoff(self, attempt: int) -> float:
        return random.uniform(
            0, min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
        )

    def post_lead(
        self,
        lead: Mapping[str, Any],
        *,
        session: requests.Session | None = None,
        deadline: float | None = None,
    ) -> DeliveryOutcome:
        """Deliver one lead, retrying transient failures until the attempts or `deadline`
        (a `time.monotonic()` instant) run out. Never raises for an HTTP or network failure."""
        own = session is None
        session = session or self.session()
        url = f"{self.base_url.rstrip('/')}/leads"
        headers = {"Idempotency-Key": str(lead["lead_event_id"])}
        latencies: list[float] = []
        status: int | None = None
        detail = ""
        try:
            for attempt in range(1, self.max_attempts + 1):
                started = time.monotonic()
                if deadline is not None and started >= deadline:
                    return DeliveryOutcome(
                        "out_of_time", status, detail, attempt - 1, tuple(latencies)
                    )
                retry_after = None
                try:
                    response = session.post(
                        url,
                        json=dict(lead),
                        headers=headers,
                        timeout=(self.connect_timeout_s, self.read_timeout_s),
                    )
                except (requests.ConnectionError, requests.Timeout) as exc:
                    status, detail = None, f"no answer: {type(exc).__name__}"
                else:
                    status = response.status_code
                    if 200 <= status < 300 or status == 409:
                        latencies.append(time.monotonic() - started)
                        return DeliveryOutcome(
                            "delivered", status, f"HTTP {status}", attempt, tuple(latencies)
                        )
                    detail = f"HTTP {status}: {redacted_excerpt(response.text, lead)}"
                    if status != 429 and status < 500:
                        latencies.append(time.monotonic() - started)
                        return DeliveryOutcome(
                            "rejected", status, detail, attempt, tuple(latencies)
                        )
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                latencies.append(time.monotonic() - started)
                if attempt == self.max_attempts:
                    break
                wait = (
                    min(retry_after, self.retry_after_max_s)
                    if retry_after is not None
                    else self._backoff(attempt)
                )
                if deadline is not None and time.monotonic() + wait >= deadline:
                    return DeliveryOutcome("out_of_time", status, detail, attempt, tuple(latencies))
                time.sleep(wait)
            return DeliveryOutcome("exhausted", status, detail, self.max_attempts, tuple(latencies))
        finally:
            if own:
                session.close()
