"""The CRM / lead-management REST client (Contract 4).

POST `{base_url}/leads` with `Idempotency-Key: lead_event_id` and a bearer token. 2xx and 409
mean delivered; 429, 5xx, connection errors and timeouts are retried with capped exponential
backoff and full jitter, honouring `Retry-After`, until the attempts or the caller's deadline
run out; any other 4xx is permanent (the caller dead-letters it). Retrying is safe because the
CRM deduplicates on the idempotency key. Nothing here logs the token or the lead's contact.

No answer of the CRM can fool it (DESIGN "Hostile input"):

- A redirect is never followed on a POST: `requests` would re-send it as a GET to the new
  address, which answers 200 without taking the lead. Any 3xx is a permanent failure whose
  detail names the `Location`, so someone fixes LEAD_API_URL and re-drives.
- No exception of `requests` (or of reading and decoding an answer) escapes `post_lead`: each
  is a retry, or a permanent failure when it is about the lead itself.
- A malformed `Retry-After` falls back to the jittered backoff; a huge one is capped.
- Each request has a wall-clock deadline (`request_deadline_s`, and the caller's), not only
  per-read timeouts: a watchdog shuts the socket down when it passes, so a server trickling
  its headers or body a byte at a time cannot hold a worker. At most `max_body_bytes` of a
  body are kept (only for the detail's excerpt); the status decides the outcome.
- A bearer token goes over https:// only, unless `allow_http` (LEAD_API_ALLOW_HTTP, meant
  for the loopback test double). A misconfigured client refuses before sending anything
  (`check_config`, which the resource calls when a run sets it up), never lead by lead.
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import requests
import requests.adapters
import requests.auth
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from enrollment_pipeline.settings import CrmSettings

Outcome = Literal["delivered", "rejected", "exhausted", "out_of_time"]
_EMAIL = re.compile(r"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+")
_EXCERPT = 300
_ASCII_DIGITS = re.compile(r"[0-9]+")  # not str.isdigit(): that takes "²" and "٣"
_READ_CHUNK = 16 * 1024
RETRY_AFTER_MAX_S = 300.0

# Errors of the client's configuration (the URL), the same for every lead: retrying a lead
# is pointless and dead-lettering it wrong. `check_config` catches them before a run starts.
_CONFIG_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidProxyURL,
)


class CrmConfigError(ValueError):
    """The client cannot be used as configured (a one-line message naming the setting)."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one lead: `delivered`; `rejected` (a permanent 3xx or 4xx, or a lead
    that cannot be put in a request); `exhausted` (every attempt failed transiently, or the
    URL cannot be used); `out_of_time` (the run's deadline came first)."""

    outcome: Outcome
    status: int | None  # the last HTTP status; None when no answer came
    detail: str  # status and a body excerpt, contact values redacted
    attempts: int
    latencies_s: tuple[float, ...]

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def retry_after_seconds(
    value: str | None, *, now: Callable[[], float] = time.time, cap: float = RETRY_AFTER_MAX_S
) -> float | None:
    """Seconds from a Retry-After header (ASCII delta-seconds or an HTTP date), within
    [0, cap]; None for anything else (the caller backs off instead). Never raises."""
    try:
        if not isinstance(value, str):
            return None
        value = value.strip()
        if not value:
            return None
        if _ASCII_DIGITS.fullmatch(value):
            # More digits than any real wait: cap it (int() refuses over 4,300 digits).
            seconds = float(value) if len(value) <= 12 else math.inf
        else:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - now()
        if math.isnan(seconds):
            return None
        return min(max(seconds, 0.0), max(float(cap), 0.0))
    except Exception:  # a date out of range, garbage: no advice
        return None


def redacted_excerpt(text: str, lead: Mapping[str, Any]) -> str:
    """A short excerpt of a CRM answer without the lead's contact values or any email address
    (CRMs echo the offending field back; dead letters and logs must not carry it)."""
    excerpt = text[: _EXCERPT * 2]
    contact = lead.get("contact") or {}
    for value in sorted((str(v) for v in contact.values() if v), key=len, reverse=True):
        excerpt = excerpt.replace(value, "[redacted]")
    excerpt = _EMAIL.sub("[redacted]", excerpt)
    return excerpt[:_EXCERPT]


# -- the wall-clock deadline of one request --------------------------------------------------

_current = threading.local()  # the _Watch of the request this thread is making


class _Watch:
    """One request's deadline. Connections of our sessions attach themselves to the watch of
    the thread's current request; `expire` (the watchdog) shuts their socket down, which ends
    a blocked read at once, however slowly the server trickles."""

    def __init__(self) -> None:
        self.expired = False
        self.done = False
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._conn = conn

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            conn = self._conn
        if conn is not None:
            _shutdown(getattr(conn, "sock", None))

    def finish(self) -> None:
        with self._lock:
            self.done, self._conn = True, None


class _Watchdog:
    """One thread for the process that expires the watches whose deadline passed (a timer
    thread per request would cost more than a loopback request)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh (also in a forked child, where the thread and the lock's holder are
        gone)."""
        self._due: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, watch: _Watch, at: float) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="crm-deadlines", daemon=True)
                self._thread.start()
            if len(self._due) >= 4096:  # mostly finished requests: keep those in flight
                self._due = [entry for entry in self._due if not entry[2].done]
                heapq.heapify(self._due)
            heapq.heappush(self._due, (at, next(self._order), watch))
            if self._due[0][2] is watch:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    while self._due and self._due[0][2].done:
                        heapq.heappop(self._due)
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        watch = heapq.heappop(self._due)[2]
                        break
                    self._wake.wait(self._due[0][0] - now if self._due else None)
            watch.expire()


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.reset)


def _shutdown(sock: Any) -> None:
    try:  # the plain socket's shutdown, also under TLS (SSLSocket's would drop its state)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except Exception:  # closed already, or not a socket (TLS in TLS): the timeouts bound it
        pass


class _Watched:
    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(self)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        watch = getattr(_current, "watch", None)
        if watch is not None and watch.expired:  # it passed while connecting or sending
            raise TimeoutError("request deadline passed")
        return super().getresponse()  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections the deadline watchdog can reach (direct and through
    an HTTP proxy; through a SOCKS proxy only the body's deadline and the timeouts apply)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _Bearer(requests.auth.AuthBase):
    """`Authorization: Bearer …`; as the session's auth, no ~/.netrc entry can replace it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


@dataclass(frozen=True)
class _Answer:
    """One attempt: `delivered`, `rejected`, `retry`, `unsendable` (the URL is unusable) or
    `out_of_time` (the caller's deadline cut it)."""

    kind: str
    status: int | None
    detail: str
    retry_after: float | None = None


def _shown_location(location: str, lead: Mapping[str, Any]) -> str:
    """Where a redirect pointed, enough to fix LEAD_API_URL: scheme, host, port and path,
    never a password or the query (contact values travel there), the path redacted."""
    try:
        parts = urlsplit(location.strip())
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        origin = f"{host}:{parts.port}" if parts.port else host
        if parts.scheme:
            origin = f"{parts.scheme}://{origin}"
        elif origin:
            origin = f"//{origin}"
        shown = origin + redacted_excerpt(unquote(parts.path), lead)
        return shown + ("?..." if parts.query or parts.fragment else "")
    except ValueError:  # not even a URL
        return redacted_excerpt(unquote(location), lead)


def _unsendable(exc: Exception) -> str:
    return f"not sent: {type(exc).__name__} (check LEAD_API_URL and any HTTP(S)_PROXY)"


def _usable_header_value(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable() and value == value.strip()


def _body_text(body: bytes, headers: Mapping[str, str]) -> str:
    """The body as text for an excerpt, whatever its declared charset (never raises)."""
    try:
        encoding = (headers.get("Content-Encoding") or "").strip().lower()
        if encoding not in ("", "identity"):
            return f"(a body in {encoding[:40]} encoding)"
        charset = requests.utils.get_encoding_from_headers(headers) or "utf-8"  # type: ignore[arg-type]
        try:
            return body.decode(charset, errors="replace")
        except Exception:  # unknown, not a text encoding, or refusing "replace" (idna)
            return body.decode("utf-8", errors="replace")
    except Exception:
        return ""


@dataclass(frozen=True)
class CrmClient:
    """LEAD_API_URL, LEAD_API_TOKEN and the retry policy of one lead."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    # LEAD_API_ALLOW_HTTP: send the token over plain http:// (loopback only).
    allow_http: bool = False
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    # The longest one request may take, connecting, waiting and reading included.
    request_deadline_s: float = 30.0
    # Of a body, only this much is kept (for the detail's excerpt); the rest is not read.
    max_body_bytes: int = 64 * 1024
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # A Retry-After beyond this is cut to it: the run's deadline bounds the wait anyway.
    retry_after_max_s: float = RETRY_AFTER_MAX_S

    @classmethod
    def from_settings(cls, settings: CrmSettings) -> CrmClient:
        """The one mapping from the environment's variables to a client."""
        token = settings.lead_api_token
        return cls(
            base_url=settings.lead_api_url,
            token=token.get_secret_value() if token else None,
            allow_http=settings.lead_api_allow_http,
            connect_timeout_s=settings.lead_api_connect_timeout_seconds,
            read_timeout_s=settings.lead_api_read_timeout_seconds,
            request_deadline_s=settings.lead_api_request_deadline_seconds,
            max_attempts=settings.lead_api_max_attempts,
        )

    def check_config(self) -> None:
        """Raise `CrmConfigError` unless the client can send a lead as configured."""
        try:
            url = urlsplit(self.base_url)
            scheme, host = url.scheme.lower(), url.hostname
        except ValueError:
            scheme, host = "", None
        if scheme not in ("http", "https") or not host:
            raise CrmConfigError(
                "LEAD_API_URL must be an http:// or https:// URL with a host "
                f"(got {'scheme ' + repr(scheme) if scheme else 'no scheme'}"
                f"{'' if host else ', no host'})"
            )
        if url.query or url.fragment or self.base_url.rstrip().endswith(("?", "#")):
            raise CrmConfigError(
                "LEAD_API_URL must not have a query or a fragment: leads go to {LEAD_API_URL}/leads"
            )
        try:
            requests.Request("POST", self._leads_url()).prepare()
        except Exception as exc:
            raise CrmConfigError(
                f"LEAD_API_URL is not a usable URL ({type(exc).__name__})"
            ) from None
        if self.token is not None:
            if not _usable_header_value(self.token):
                raise CrmConfigError(
                    "LEAD_API_TOKEN cannot be a bearer token: it is empty or has spaces, "
                    "line breaks or non-ASCII characters"
                )
            if scheme == "http" and not self.allow_http:
                raise CrmConfigError(
                    "refusing to send LEAD_API_TOKEN over plain http:// (LEAD_API_URL): use an "
                    "https:// LEAD_API_URL, or set LEAD_API_ALLOW_HTTP=true for a CRM on loopback"
                )

    def session(self) -> requests.Session:
        """One keep-alive session per worker thread (requests sessions are not thread-safe).
        Raises `CrmConfigError` for a misconfigured client, before anything is sent."""
        self.check_config()
        session = requests.Session()
        session.mount("https://", _Adapter())
        session.mount("http://", _Adapter())
        if self.token:
            session.auth = _Bearer(self.token)
        return session

    def _leads_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/leads"

    def _backoff(self, attempt: int) -> float:
        ceiling = self.backoff_initial_s * 2.0 ** min(attempt - 1, 62)
        return random.uniform(0, min(self.backoff_max_s, ceiling))

    def post_lead(
        self,
        lead: Mapping[str, Any],
        *,
        session: requests.Session | None = None,
        deadline: float | None = None,
    ) -> DeliveryOutcome:
        """Deliver one lead, retrying transient failures until the attempts or `deadline`
        (a `time.monotonic()` instant) run out. Never raises for an answer of the CRM or a
        network failure; only `CrmConfigError` (from `session()`), before anything is sent."""
        own = session is None
        session = session or self.session()
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
                answer = self._attempt(session, lead, deadline)
                latencies.append(time.monotonic() - started)
                status, detail = answer.status, answer.detail
                if answer.kind in ("delivered", "rejected", "out_of_time"):
                    return DeliveryOutcome(
                        answer.kind,  # type: ignore[arg-type]
                        status,
                        detail,
                        attempt,
                        tuple(latencies),
                    )
                if answer.kind == "unsendable":  # parked, not dead-lettered: fix and it goes
                    return DeliveryOutcome("exhausted", status, detail, attempt, tuple(latencies))
                if attempt == self.max_attempts:
                    break
                wait = (
                    answer.retry_after if answer.retry_after is not None else self._backoff(attempt)
                )
                if deadline is not None and time.monotonic() + wait >= deadline:
                    return DeliveryOutcome("out_of_time", status, detail, attempt, tuple(latencies))
                time.sleep(wait)
            return DeliveryOutcome("exhausted", status, detail, self.max_attempts, tuple(latencies))
        finally:
            if own:
                session.close()

    def _attempt(
        self, session: requests.Session, lead: Mapping[str, Any], run_deadline: float | None
    ) -> _Answer:
        """One POST within its deadline, classified. Never raises."""
        key = str(lead.get("lead_event_id", ""))
        if not _usable_header_value(key):
            return _Answer("rejected", None, "not sent: its lead_event_id cannot be a header")
        try:
            prepared = session.prepare_request(
                requests.Request(
                    "POST",
                    self._leads_url(),
                    json=dict(lead),
                    # identity: a body we cut at max_body_bytes is text, not a zip bomb
                    headers={"Idempotency-Key": key, "Accept-Encoding": "identity"},
                )
            )
        except _CONFIG_ERRORS as exc:
            return _Answer("unsendable", None, _unsendable(exc))
        except Exception as exc:  # the lead itself cannot be a request (e.g. not JSON)
            return _Answer("rejected", None, f"not sent: {type(exc).__name__}")

        started = time.monotonic()
        ends = started + self.request_deadline_s
        cut_by_run = run_deadline is not None and run_deadline <= ends
        if run_deadline is not None:
            ends = min(ends, run_deadline)
        remaining = max(ends - started, 0.001)
        watch = _Watch()
        _current.watch = watch
        _WATCHDOG.watch(watch, ends)
        response: requests.Response | None = None
        complete = False
        try:
            try:
                # The adapter itself, not Session.send: with allow_redirects=False the session
                # still reads a 3xx's whole body (to prepare the next request) before returning.
                # Nothing here follows a redirect: a redirected POST becomes a GET elsewhere.
                url = prepared.url or self._leads_url()
                options = session.merge_environment_settings(url, {}, True, None, None)
                response = session.get_adapter(url).send(
                    prepared,
                    timeout=(
                        min(self.connect_timeout_s, remaining),
                        min(self.read_timeout_s, remaining),
                    ),
                    **options,
                )
            except _CONFIG_ERRORS as exc:
                return _Answer("unsendable", None, _unsendable(exc))
            except Exception as exc:  # connection, TLS, timeout, protocol: try again
                if watch.expired or time.monotonic() >= ends:
                    return self._cut(cut_by_run)
                return _Answer("retry", None, f"no answer: {type(exc).__name__}")
            status = response.status_code
            body, complete, note = self._read_body(response, watch, ends)
            return self._classify(response, status, body, note, lead)
        except Exception as exc:  # a bug of ours or of a library: never the caller's problem
            return _Answer("retry", None, f"no answer: {type(exc).__name__}")
        finally:
            watch.finish()
            _current.watch = None
            if response is not None:
                try:
                    if complete and response.status_code >= 200:
                        response.raw.release_conn()  # read to its end: keep the connection
                    else:
                        response.close()  # the rest of the body is never read
                except Exception:
                    pass

    def _cut(self, by_run: bool) -> _Answer:
        """No answer before the deadline: the run's (the next run tries the lead again), or
        the request's (retried)."""
        if by_run:
            return _Answer("out_of_time", None, "no answer before the run's deadline")
        return _Answer(
            "retry",
            None,
            f"no answer within LEAD_API_REQUEST_DEADLINE_SECONDS ({self.request_deadline_s:g} s)",
        )

    def _read_body(
        self, response: requests.Response, watch: _Watch, ends: float
    ) -> tuple[bytes, bool, str]:
        """At most `max_body_bytes` of the body, before the deadline: (kept, read to its end,
        a note on why it was cut). Never raises."""
        kept = bytearray()
        raw = response.raw
        read = getattr(raw, "read1", None) or raw.read
        try:
            while True:
                if watch.expired or time.monotonic() >= ends:
                    return bytes(kept), False, "body cut at the deadline"
                chunk = read(_READ_CHUNK, decode_content=False)
                if not chunk:
                    return bytes(kept), True, ""
                room = self.max_body_bytes - len(kept)
                if len(chunk) > room:
                    kept += chunk[:room]
                    return bytes(kept), False, f"body cut at {self.max_body_bytes} bytes"
                kept += chunk
        except Exception as exc:
            if watch.expired:
                return bytes(kept), False, "body cut at the deadline"
            return bytes(kept), False, f"body broken: {type(exc).__name__}"

    def _classify(
        self,
        response: requests.Response,
        status: int,
        body: bytes,
        note: str,
        lead: Mapping[str, Any],
    ) -> _Answer:
        """The status decides; the body is only the detail's excerpt."""
        if 200 <= status < 300 or status == 409:
            return _Answer("delivered", status, f"HTTP {status}")
        headers = response.headers
        if 300 <= status < 400:
            location = headers.get("Location")
            where = f"to {_shown_location(location, lead)!r}" if location else "without a Location"
            return _Answer(
                "rejected",
                status,
                f"HTTP {status}: redirect {where} not followed (a POST is never redirected; "
                "point LEAD_API_URL at the CRM's final address)",
            )
        detail = f"HTTP {status}: {redacted_excerpt(_body_text(body, headers), lead)}"
        if note:
            detail += f" [{note}]"
        if 400 <= status < 500 and status != 429:
            return _Answer("rejected", status, detail)
        # 429, 5xx, and a status no CRM should send (1xx, 6xx and up): try again later.
        retry_after = retry_after_seconds(headers.get("Retry-After"), cap=self.retry_after_max_s)
        return _Answer("retry", status, detail, retry_after)
