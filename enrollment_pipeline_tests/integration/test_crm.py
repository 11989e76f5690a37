"""The CRM client against a real HTTP server on loopback (pytest-httpserver)."""

from __future__ import annotations

import time

import pytest
from werkzeug import Response

from enrollment_pipeline.defs.crm.resources import CrmClient
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

LEAD = {
    "lead_event_id": "lead-1",
    "application_id": "APP-1",
    "lead_status": "NEW",
    "contact": {"email": "jane@example.com", "first_name": "Jane"},
}


def _client(httpserver, **kwargs) -> CrmClient:
    return CrmClient(
        base_url=httpserver.url_for("/"),
        token="t0ken",
        allow_http=True,  # the server is on loopback
        backoff_initial_s=0.01,
        **kwargs,
    )


def test_lead_is_posted_with_idempotency_key_and_bearer_token(httpserver):
    httpserver.expect_oneshot_request(
        "/leads",
        method="POST",
        json=LEAD,
        headers={"Idempotency-Key": "lead-1", "Authorization": "Bearer t0ken"},
    ).respond_with_json({"id": "crm-9"}, status=201)
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.delivered, outcome.status) == (True, 201)
    httpserver.check_assertions()


def test_conflict_means_already_delivered(httpserver):
    httpserver.expect_oneshot_request("/leads").respond_with_data("dup", status=409)
    assert _client(httpserver).post_lead(LEAD).delivered


def test_server_errors_and_throttling_are_retried(httpserver):
    httpserver.expect_ordered_request("/leads").respond_with_data("down", status=503)
    httpserver.expect_ordered_request("/leads").respond_with_response(
        Response("slow down", status=429, headers={"Retry-After": "0"})
    )
    httpserver.expect_ordered_request("/leads").respond_with_data("ok", status=200)
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.delivered, outcome.status) == (True, 200)
    assert len(httpserver.log) == 3


def test_other_client_errors_are_permanent_and_not_retried(httpserver):
    httpserver.expect_request("/leads").respond_with_data(
        "bad email jane@example.com for Jane", status=422
    )
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("rejected", 422, 1)
    # The CRM's words are kept, the contact it echoed is not.
    assert outcome.detail == "HTTP 422: bad email [redacted] for [redacted]"
    assert len(httpserver.log) == 1


def test_unreachable_crm_is_exhausted_after_the_attempts():
    (port,) = free_ports(1)
    client = CrmClient(
        base_url=f"http://127.0.0.1:{port}",
        max_attempts=2,
        backoff_initial_s=0.01,
        connect_timeout_s=1,
    )
    outcome = client.post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("exhausted", None, 2)
    assert outcome.detail == "no answer: ConnectionError"


def test_a_stall_past_the_read_timeout_is_retried(threaded_httpserver):
    httpserver = threaded_httpserver
    stalled = []

    def handler(request):
        if not stalled:
            stalled.append(True)
            time.sleep(1.5)
        return Response("{}", status=201)

    httpserver.expect_request("/leads").respond_with_handler(handler)
    outcome = _client(httpserver, read_timeout_s=0.5).post_lead(LEAD)
    assert (outcome.outcome, outcome.attempts) == ("delivered", 2)


def test_a_retry_after_beyond_the_deadline_stops_in_time(httpserver):
    httpserver.expect_request("/leads").respond_with_response(
        Response("busy", status=429, headers={"Retry-After": "60"})
    )
    started = time.monotonic()
    outcome = _client(httpserver).post_lead(LEAD, deadline=time.monotonic() + 2)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("out_of_time", 429, 1)
    assert time.monotonic() - started < 2
