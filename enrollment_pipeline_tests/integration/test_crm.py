"""The CRM client against a real HTTP server on loopback (pytest-httpserver)."""

from __future__ import annotations

import pytest
from werkzeug import Response

from enrollment_pipeline.defs.crm.resources import CrmClient, RetryableCrmError
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

LEAD = {"lead_event_id": "lead-1", "application_id": "APP-1", "lead_status": "NEW"}


def _client(httpserver, **kwargs) -> CrmClient:
    return CrmClient(
        base_url=httpserver.url_for("/"), token="t0ken", backoff_initial_s=0.01, **kwargs
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
    httpserver.expect_request("/leads").respond_with_data("bad lead", status=422)
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.delivered, outcome.status, outcome.detail) == (False, 422, "bad lead")
    assert len(httpserver.log) == 1


def test_unreachable_crm_raises_after_the_attempts():
    (port,) = free_ports(1)
    client = CrmClient(
        base_url=f"http://127.0.0.1:{port}", max_attempts=2, backoff_initial_s=0.01, timeout_s=1
    )
    with pytest.raises(RetryableCrmError, match="unreachable"):
        client.post_lead(LEAD)
