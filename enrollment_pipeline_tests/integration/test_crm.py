"""The CRM client against a real HTTP server on loopback (pytest-httpserver)."""

from __future__ import annotations

import re
import socket
import threading
import time
import tracemalloc

import pytest
from werkzeug import Response

from enrollment_pipeline.lib.clients.crm import CrmClient, CrmConfigError
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

LEAD = {
    "lead_event_id": "lead-1",
    "application_id": "APP-1",
    "lead_status": "NEW",
    "contact": {"email": "jane@example.com", "first_name": "Jane"},
}

# Exactly the Contract-4 fields, as the local CRM double wants them.
FULL_LEAD = {
    "lead_event_id": "lead-1",
    "source_event_id": "event-1",
    "application_id": "APP-1",
    "lead_status": "NEW",
    "occurred_at": "2026-11-26T10:00:00Z",
    "contact": {
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "jane@example.com",
        "phone": None,
        "state": "CA",
    },
    "product": "MEDICAL",
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


# -- answers that must not fool the client -----------------------------------------------------


class RawServer:
    """A tiny HTTP server on a raw socket, for answers no framework sends: headers or bodies
    trickled a byte at a time, bodies of any size, broken framing. `answers[n]` writes the
    n-th request's answer (the last one repeats); `requests` holds each request's bytes and
    `sent` what was written for it."""

    def __init__(self, answers) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            with self.lock:
                index = len(self.requests)
                self.requests.append(data)
                self.sent.append(0)
            answer = self.answers[min(index, len(self.answers) - 1)]

            def send(raw: bytes) -> None:
                conn.sendall(raw)
                with self.lock:
                    self.sent[index] += len(raw)

            try:
                answer(send)
            except OSError:  # the client hung up: what a server sees when it is cut off
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(*answers) -> RawServer:
        servers.append(RawServer(answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def created(send) -> None:
    send(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


def trickle(raw: bytes, every_s: float = 1.0):
    def answer(send) -> None:
        for byte in raw:
            send(bytes([byte]))
            time.sleep(every_s)

    return answer


def head_then(head: bytes, body_answer):
    def answer(send) -> None:
        send(head)
        body_answer(send)

    return answer


def raw_client(url: str, **kwargs) -> CrmClient:
    options = {"backoff_initial_s": 0.01, "read_timeout_s": 5.0, "request_deadline_s": 1.5}
    return CrmClient(base_url=url, **{**options, **kwargs})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_fails_the_lead_for_good(httpserver, status):
    moved = []
    httpserver.expect_request("/leads", method="POST").respond_with_response(
        Response(
            "",
            status=status,
            headers={"Location": "/moved?email=jane%40example.com&who=Jane"},
        )
    )
    httpserver.expect_request("/moved").respond_with_handler(
        lambda request: moved.append(request.method) or Response("{}", status=200)
    )
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("rejected", status, 1)
    assert "redirect to '/moved?...' not followed" in outcome.detail
    assert "LEAD_API_URL" in outcome.detail
    assert "jane" not in outcome.detail.lower() and "%40" not in outcome.detail
    assert moved == []  # the GET that answers 200 without taking the lead never happened
    assert [(r.method, r.path) for r, _ in httpserver.log] == [("POST", "/leads")]


def test_an_http_url_behind_an_https_redirect_is_not_followed(httpserver):
    https = httpserver.url_for("/leads").replace("http://", "https://")
    with_secrets = https.replace("https://", "https://admin:hunter2@") + "?email=a%40b.example"
    httpserver.expect_request("/leads", method="POST").respond_with_response(
        Response("Moved", status=301, headers={"Location": with_secrets})
    )
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.outcome, outcome.status) == ("rejected", 301)
    assert f"redirect to '{https}?...'" in outcome.detail  # where to point LEAD_API_URL
    assert "hunter2" not in outcome.detail and "b.example" not in outcome.detail
    assert len(httpserver.log) == 1


def test_a_redirect_with_a_huge_trickling_body_is_decided_by_its_status(raw_server):
    server = raw_server(
        head_then(
            b"HTTP/1.1 302 Found\r\nLocation: /moved\r\nContent-Length: 50000000\r\n\r\n",
            trickle(b"x" * 100, every_s=0.2),
        )
    )
    started = time.monotonic()
    outcome = raw_client(server.url).post_lead(LEAD)
    assert (outcome.outcome, outcome.status) == ("rejected", 302)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "retry_after",
    ["²", "٣", "-1", "nan", "1e3", "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT", "soon"],
)
def test_a_malformed_retry_after_falls_back_to_the_backoff_then_the_lead_goes(
    httpserver, retry_after
):
    try:  # headers go as bytes: a server writes other characters as UTF-8, the client reads
        retry_after.encode("latin-1")  # latin-1 ("²" is one byte)
    except UnicodeEncodeError:
        retry_after = retry_after.encode("utf-8").decode("latin-1")
    httpserver.expect_ordered_request("/leads").respond_with_response(
        Response("slow down", status=429, headers={"Retry-After": retry_after})
    )
    httpserver.expect_ordered_request("/leads").respond_with_response(
        Response("busy", status=503, headers={"Retry-After": retry_after})
    )
    httpserver.expect_ordered_request("/leads").respond_with_data("{}", status=201)
    started = time.monotonic()
    # A huge wait is capped (here to 0.1 s); garbage means the jittered backoff.
    outcome = _client(httpserver, retry_after_max_s=0.1).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("delivered", 201, 3)
    assert time.monotonic() - started < 2
    assert len(httpserver.log) == 3


def test_a_body_in_a_charset_that_cannot_decode_still_gives_a_detail(httpserver):
    # "punycode" and "idna" refuse errors="replace": requests' response.text raises for them.
    httpserver.expect_request("/leads").respond_with_response(
        Response(
            b"\xff\xfe bad jane@example.com",
            status=422,
            content_type="text/plain; charset=punycode",
        )
    )
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.outcome, outcome.status) == ("rejected", 422)
    assert outcome.detail.startswith("HTTP 422: ") and "jane@example.com" not in outcome.detail


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 abc Nope\r\n\r\n",  # not a status line
        b"garbage\r\n\r\n",
        b"HTTP/1.1 201 Created\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n",  # a huge header
        b"HTTP/1.1 201 Created\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
        b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n",  # a status no CRM sends
        b"HTTP/1.1 102 Processing\r\n\r\n",  # an interim answer, then nothing
        b"",  # the connection closes without a word
    ],
)
def test_a_broken_answer_is_retried_never_raised_nor_delivered(raw_server, broken):
    server = raw_server(lambda send: send(broken), created)
    outcome = raw_client(server.url).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("delivered", 201, 2)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-a-size\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n",  # closed before the headers end
        b"HTTP/1.1 201 Created\r\nContent-Length: 900\r\n\r\n{}",  # shorter than it says
    ],
)
def test_a_broken_body_after_a_success_status_is_still_delivered(raw_server, broken):
    # The CRM said 201: it took the lead, whatever happened to the body after that.
    server = raw_server(lambda send: send(broken))
    outcome = raw_client(server.url).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("delivered", 201, 1)
    assert len(server.requests) == 1


def test_a_broken_body_of_a_server_error_is_retried(raw_server):
    server = raw_server(
        lambda send: send(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        created,
    )
    outcome = raw_client(server.url).post_lead(LEAD)
    assert (outcome.outcome, outcome.attempts) == ("delivered", 2)


@pytest.mark.parametrize(
    "answer",
    [
        # the status line and headers, one byte a second: each read comes well within the
        # 5 s read timeout, so only a deadline on the whole request ends it
        trickle(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"),
        head_then(b"HTTP/1.1 503 Busy\r\nContent-Length: 600\r\n\r\n", trickle(b"x" * 600)),
    ],
    ids=["headers", "body"],
)
def test_a_trickling_answer_ends_at_the_request_deadline_and_is_retried(raw_server, answer):
    server = raw_server(answer, created)
    started = time.monotonic()
    outcome = raw_client(server.url, request_deadline_s=1.5, read_timeout_s=5).post_lead(LEAD)
    elapsed = time.monotonic() - started
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("delivered", 201, 2)
    assert 1.4 < outcome.latencies_s[0] < 2.5  # the first attempt ended at its deadline
    assert elapsed < 4  # not the 47 or 600 seconds the server would have taken


def test_a_trickling_answer_on_the_last_attempt_reports_the_deadline(raw_server):
    server = raw_server(trickle(b"HTTP/1.1 201 Created\r\n\r\n"))
    outcome = raw_client(server.url, max_attempts=2, request_deadline_s=1.0).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("exhausted", None, 2)
    assert "LEAD_API_REQUEST_DEADLINE_SECONDS" in outcome.detail


def test_the_run_deadline_bounds_a_trickling_request_too(raw_server):
    server = raw_server(trickle(b"HTTP/1.1 201 Created\r\n\r\n"))
    client = raw_client(server.url, request_deadline_s=30)
    started = time.monotonic()
    outcome = client.post_lead(LEAD, deadline=time.monotonic() + 1.5)
    assert outcome.outcome == "out_of_time"  # left for the next run, not failed
    assert time.monotonic() - started < 2.5


def test_a_huge_body_is_not_read_past_the_limit_and_the_lead_is_retried(raw_server):
    size = 50 * 1024 * 1024

    def huge(send) -> None:
        send(b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"jane@example.com " * 4096
        for _ in range(size // len(block)):
            send(block)

    server = raw_server(huge, created)
    client = raw_client(server.url, request_deadline_s=20)
    tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = client.post_lead(LEAD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("delivered", 201, 2)
    assert time.monotonic() - started < 5
    assert peak < 5 * 1024 * 1024  # far from the 50 MB the server offered
    time.sleep(0.2)
    assert server.sent[0] < size // 2  # the client hung up instead of reading it all


def test_the_session_keeps_its_connection_from_one_lead_to_the_next(local_crm):
    # Reading answers ourselves must not cost a new connection per lead (throughput).
    connections = []
    accept = local_crm.server.process_request
    local_crm.server.process_request = lambda request, peer: (
        connections.append(peer),
        accept(request, peer),
    )
    client = CrmClient(base_url=local_crm.url, token="s3cret-token", allow_http=True)
    session = client.session()
    leads = [dict(FULL_LEAD, lead_event_id=f"lead-{i}") for i in range(3)]
    outcomes = [client.post_lead(lead, session=session) for lead in leads]
    outcomes.append(client.post_lead(leads[0], session=session))  # a 409, with a body
    session.close()
    assert [o.status for o in outcomes] == [201, 201, 201, 409]
    assert len(local_crm.state.leads) == 3
    assert len(connections) == 1


def test_a_token_over_plain_http_is_refused_before_anything_is_sent(httpserver):
    httpserver.expect_request("/leads").respond_with_data("{}", status=201)
    refused = CrmClient(base_url=httpserver.url_for("/"), token="t0ken")
    with pytest.raises(CrmConfigError, match="LEAD_API_ALLOW_HTTP"):
        refused.post_lead(LEAD)
    assert httpserver.log == []
    allowed = CrmClient(base_url=httpserver.url_for("/"), token="t0ken", allow_http=True)
    assert allowed.post_lead(LEAD).delivered
    ((request, _),) = httpserver.log
    assert request.headers["Authorization"] == "Bearer t0ken"


def test_a_lead_that_cannot_be_a_request_fails_alone_and_sends_nothing(httpserver):
    httpserver.expect_request("/leads").respond_with_data("{}", status=201)
    client = _client(httpserver)
    not_json = client.post_lead({**LEAD, "score": float("nan")})
    bad_key = client.post_lead({**LEAD, "lead_event_id": "lead-1\r\nX-Injected: yes"})
    assert (not_json.outcome, bad_key.outcome) == ("rejected", "rejected")
    assert "Jane" not in not_json.detail + bad_key.detail
    assert httpserver.log == []
    assert client.post_lead(LEAD).delivered  # the next lead goes as usual


def test_an_unusable_proxy_parks_the_lead_without_retrying_or_raising(httpserver, monkeypatch):
    httpserver.expect_request("/leads").respond_with_data("{}", status=201)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("HTTP_PROXY", "http://")  # no host: requests' InvalidProxyURL
    outcome = _client(httpserver).post_lead(LEAD)
    assert (outcome.outcome, outcome.status, outcome.attempts) == ("exhausted", None, 1)
    assert outcome.detail.startswith("not sent: ")
    assert httpserver.log == []


def test_concurrent_trickling_requests_each_end_at_their_own_deadline(raw_server):
    server = raw_server(trickle(b"HTTP/1.1 201 Created\r\n\r\n", every_s=0.5))
    # The longer deadline first, so the watchdog must wake earlier for the later ones.
    deadlines = [2.4, 1.8, 1.2, 0.6]
    latencies: dict[float, float] = {}

    def post(deadline_s: float) -> None:
        client = raw_client(server.url, max_attempts=1, request_deadline_s=deadline_s)
        latencies[deadline_s] = client.post_lead(LEAD).latencies_s[0]

    threads = [threading.Thread(target=post, args=(d,)) for d in deadlines]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=10)
    assert set(latencies) == set(deadlines)
    for deadline_s, latency in latencies.items():
        assert deadline_s - 0.1 < latency < deadline_s + 0.5, (deadline_s, latency)
