"""The CRM client's parts that need no server: Retry-After parsing, the configuration checks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrollment_pipeline.defs.crm.resources import CrmResource
from enrollment_pipeline.lib.clients.crm import CrmClient, CrmConfigError, retry_after_seconds
from enrollment_pipeline.settings import PipelineSettings

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def _at_now() -> float:
    return NOW.timestamp()


# Values a CRM or a proxy in front of it really sends, or that break naive parsers.
HOSTILE = [
    "²",  # str.isdigit() is True, float() refuses it
    "٣",  # an Arabic-Indic digit: the same
    "\uff13",  # a full-width digit 3
    "1²",
    "-5",
    "+5",
    "1.5",
    "1e3",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "5 seconds",
    "5, 7",  # two Retry-After headers, joined
    "9" * 5000,  # more digits than int() converts
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Sat, 01 Jan 10000 00:00:00 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "Thu, 30 Feb 2026 12:00:00 GMT",
    "Sun, 29 Nov 2026 25:61:61 GMT",
    "Sun, 29 Nov 2026 12:00:00 +9999",
    "\x00",
    "\r\n",
    "",
    " ",
]


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(),
        st.sampled_from(HOSTILE),
        st.from_regex(r"\A[0-9]{1,40}\Z"),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: format_datetime(d, usegmt=True)),
    ),
    cap=st.floats(min_value=0, max_value=1e6),
)
def test_any_retry_after_never_raises_and_stays_within_zero_and_the_cap(value, cap):
    seconds = retry_after_seconds(value, now=_at_now, cap=cap)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= cap)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("²", None),
        ("٣", None),
        ("\uff13", None),
        ("-5", None),
        ("1.5", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Thu, 30 Feb 2026 12:00:00 GMT", None),
        (None, None),
        ("9" * 5000, 300.0),  # capped, not refused: the CRM asked for a long wait
        ("86400", 300.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300.0),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 0.0),  # a date gone by: retry now
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
    ],
)
def test_retry_after_takes_ascii_seconds_or_an_http_date_and_nothing_else(value, expected):
    assert retry_after_seconds(value, now=_at_now, cap=300.0) == expected


def test_a_bearer_token_over_plain_http_is_refused_unless_allowed():
    with pytest.raises(CrmConfigError) as refused:
        CrmClient(base_url="http://crm.example/api", token="t0ken").check_config()
    message = str(refused.value)
    assert "LEAD_API_URL" in message and "LEAD_API_ALLOW_HTTP" in message
    assert "t0ken" not in message and "\n" not in message
    # The same client cannot even make a session: nothing can be sent.
    with pytest.raises(CrmConfigError):
        CrmClient(base_url="http://crm.example/api", token="t0ken").session()

    CrmClient(base_url="http://127.0.0.1:8090", token="t0ken", allow_http=True).check_config()
    CrmClient(base_url="https://crm.example/api", token="t0ken").check_config()
    CrmClient(base_url="HTTPS://crm.example/api", token="t0ken").check_config()
    CrmClient(base_url="http://crm.example/api").check_config()  # no token: http is fine


@pytest.mark.parametrize(
    "url",
    [
        "ftp://crm.example/api",
        "file:///etc/passwd",
        "crm.example/api",
        "//crm.example/api",
        "http://",
        "https://:443/api",
        "http://127.0.0.1:99999",
        "http://[::1/api",
        "https://crm.example/api?key=1",  # leads would go to ...?key=1/leads
        "https://crm.example/api#top",
        "",
    ],
)
def test_lead_api_url_must_be_an_http_or_https_url(url):
    with pytest.raises(CrmConfigError, match="LEAD_API_URL"):
        CrmClient(base_url=url).check_config()


@pytest.mark.parametrize("token", ["", " t0ken", "t0ken\n", "t0k\r\nX-Evil: 1", "tök€n"])
def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(token):
    with pytest.raises(CrmConfigError, match="LEAD_API_TOKEN") as refused:
        CrmClient(base_url="https://crm.example", token=token).check_config()
    assert token.strip() not in str(refused.value) or not token.strip()


def test_the_allowance_and_the_deadline_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEAD_API_URL", "http://127.0.0.1:8090")
    monkeypatch.setenv("LEAD_API_ALLOW_HTTP", "true")
    monkeypatch.setenv("LEAD_API_REQUEST_DEADLINE_SECONDS", "12.5")
    for crm in (
        CrmClient.from_settings(PipelineSettings()),
        CrmResource.from_settings(PipelineSettings()),
    ):
        assert (crm.allow_http, crm.request_deadline_s) == (True, 12.5)
    monkeypatch.delenv("LEAD_API_ALLOW_HTTP")
    assert CrmResource.from_settings(PipelineSettings()).allow_http is False
