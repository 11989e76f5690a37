"""The CRM / lead-management REST client (Contract 4).

POST `{base_url}/leads` with `Idempotency-Key: lead_event_id` and a bearer token. 2xx and 409
mean delivered; 429, 5xx, connection errors and timeouts are retried with capped exponential
backoff and jitter, honouring `Retry-After`; any other 4xx is permanent (the caller
dead-letters it). Retrying is safe because the CRM deduplicates on the idempotency key.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import requests
from pydantic import Field
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    status: int | None
    detail: str


class RetryableCrmError(RuntimeError):
    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class CrmClient(dg.ConfigurableResource):
    """LEAD_API_URL and LEAD_API_TOKEN (through dg.EnvVar)."""

    base_url: str = Field(description="LEAD_API_URL")
    token: str | None = Field(default=None, description="LEAD_API_TOKEN, set with dg.EnvVar")
    timeout_s: float = 10.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)
        if isinstance(exc, RetryableCrmError) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, self.backoff_max_s)
        return backoff(state)

    def _post_once(self, session: requests.Session, lead: dict[str, Any]) -> DeliveryOutcome:
        headers = {"Idempotency-Key": str(lead["lead_event_id"])}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = session.post(
                f"{self.base_url.rstrip('/')}/leads",
                json=lead,
                headers=headers,
                timeout=self.timeout_s,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableCrmError(f"CRM unreachable: {type(exc).__name__}") from exc
        status = response.status_code
        if 200 <= status < 300 or status == 409:
            return DeliveryOutcome(True, status, "delivered" if status != 409 else "duplicate")
        if status == 429 or status >= 500:
            raise RetryableCrmError(
                f"CRM answered {status}", _retry_after(response.headers.get("Retry-After"))
            )
        return DeliveryOutcome(False, status, response.text[:500])

    def post_lead(self, lead: dict[str, Any]) -> DeliveryOutcome:
        """Deliver one lead; retries transient failures, returns a permanent failure."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableCrmError),
            reraise=True,
        )
        with requests.Session() as session:
            return retrying(self._post_once, session, lead)
