"""A TEST DOUBLE of a CRM's lead API, for the local stack, the demo and the tests. Not a CRM.

It does what the pipeline relies on a real CRM for, and no more:

- `POST /leads` takes one Contract-4 lead with an `Idempotency-Key` (and the bearer token, when
  started with one): 201 the first time, 409 for a key it already took, 422 for a body that
  is not exactly the contract's fields, 400 without a key, 401 without the token.
- `GET /leads` lists what it took, in arrival order (`?application_id=` filters);
  `GET /requests` counts every POST per idempotency key, accepted or not.
- `POST /_faults` `{"status": 503, "count": 3, "retry_after": 1, "delay_s": 0}` makes the next
  `count` POSTs answer `status` (with `Retry-After` when given), or stall `delay_s` first;
  `DELETE /leads` forgets everything. `GET /health` answers 200.

Run it with `python -m enrollment_pipeline.stack.crm --port 8090 [--token T] [--log FILE]
[--delay-ms N]`;
`enrollment-pipeline stack up` does. State is in memory (and appended to `--log`).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LEAD_FIELDS = {
    "lead_event_id",
    "source_event_id",
    "application_id",
    "lead_status",
    "occurred_at",
    "contact",
    "product",
}
CONTACT_FIELDS = {"first_name", "last_name", "email", "phone", "state"}


@dataclass
class Fault:
    status: int = 503
    count: int = 1
    retry_after: float | None = None
    delay_s: float = 0.0


@dataclass
class CrmState:
    token: str | None = None
    log_file: Path | None = None
    delay_s: float = 0.0  # every POST answers this much later, as a remote API would
    leads: list[dict[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    requests: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> Fault | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.count -= 1
            if fault.count <= 0:
                self.faults.pop(0)
            return fault


def _problem(lead: Any) -> str | None:
    """Why a body is not exactly a Contract-4 lead (field names only)."""
    if not isinstance(lead, dict):
        return "body must be a JSON object"
    if set(lead) != LEAD_FIELDS:
        return f"fields differ from the contract: {sorted(set(lead) ^ LEAD_FIELDS)}"
    contact = lead.get("contact")
    if not isinstance(contact, dict) or set(contact) != CONTACT_FIELDS:
        return "contact fields differ from the contract"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as a real API
    # Headers and body go out in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # no contact data in logs
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return ValueError

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send(200, {"status": "ok", "test_double": True})
        elif url.path == "/leads":
            app = parse_qs(url.query).get("application_id", [None])[0]
            with state.lock:
                leads = [
                    lead for lead in state.leads if app is None or lead["application_id"] == app
                ]
            self._send(200, {"count": len(leads), "leads": leads})
        elif url.path == "/requests":
            with state.lock:
                self._send(200, dict(state.requests))
        else:
            self._send(404, {"error": "not found"})

    def do_DELETE(self) -> None:
        state = self.server.state
        if urlsplit(self.path).path != "/leads":
            self._send(404, {"error": "not found"})
            return
        with state.lock:
            state.leads.clear()
            state.keys.clear()
            state.requests.clear()
            state.faults.clear()
        self._send(200, {"status": "cleared"})

    def do_POST(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        body = self._body()
        if path == "/_faults":
            if not isinstance(body, dict):
                self._send(400, {"error": "expected a JSON object"})
                return
            with state.lock:
                state.faults.append(Fault(**body))
            self._send(200, {"status": "armed"})
            return
        if path != "/leads":
            self._send(404, {"error": "not found"})
            return
        if state.delay_s:
            time.sleep(state.delay_s)
        key = self.headers.get("Idempotency-Key")
        if key:
            with state.lock:
                state.requests[key] += 1
        fault = state.next_fault()
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after else {}
            self._send(fault.status, {"error": "injected fault"}, headers)
            return
        if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
            self._send(401, {"error": "missing or wrong bearer token"})
            return
        if not key:
            self._send(400, {"error": "Idempotency-Key header required"})
            return
        if body is ValueError:
            self._send(400, {"error": "body is not JSON"})
            return
        problem = _problem(body)
        if problem:
            self._send(422, {"error": problem})
            return
        with state.lock:
            if key in state.keys:
                duplicate = True
            else:
                duplicate = False
                state.keys.add(key)
                state.leads.append(body)
                if state.log_file:
                    with state.log_file.open("a") as log:
                        log.write(json.dumps({"idempotency_key": key, "lead": body}) + "\n")
        if duplicate:
            self._send(409, {"error": "duplicate idempotency key", "status": HTTPStatus.CONFLICT})
        else:
            self._send(201, {"id": key, "status": "created"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: CrmState


class LocalCrm:
    """The test double in this process, on a thread (tests) or as the main loop (`stack`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        log_file: Path | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.server = _Server((host, port), _Handler)
        self.server.state = CrmState(token=token, log_file=log_file, delay_s=delay_s)
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> CrmState:
        return self.server.state

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalCrm:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(
        self,
        count: int,
        status: int = 503,
        *,
        retry_after: float | None = None,
        delay_s: float = 0.0,
    ) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(status, count, retry_after, delay_s))


def main() -> None:
    parser = argparse.ArgumentParser(description="A test double of a CRM lead API (not a CRM).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", default=None)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="Answer every POST later.")
    args = parser.parse_args()
    crm = LocalCrm(
        args.host, args.port, token=args.token, log_file=args.log, delay_s=args.delay_ms / 1000
    )
    print(f"local CRM test double on {crm.url} (not a CRM)", flush=True)
    crm.server.serve_forever()


if __name__ == "__main__":
    main()
