"""Broker follow-up emails (Contract 3) on the real MongoDB-wire server and a real SMTP server.

The queue is filled by the same `apply_parsed` as ingestion; time is driven through `as_of`,
the way the hourly schedule passes its ticks.
"""

from __future__ import annotations

import email
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import policy as email_policy

import boto3
import dagster as dg
import pytest

from enrollment_pipeline.defs.followups.assets import broker_followup_emails
from enrollment_pipeline.defs.followups.schedules import followup_schedule
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import SesEmailSender, SmtpEmailSender
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.followups.run import send_followups
from enrollment_pipeline.lib.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    FOLLOWUP_ATTEMPTS,
)
from enrollment_pipeline.lib.mongo.followup_store import FollowupStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import PipelineSettings
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.conftest import Inbox, free_ports
from enrollment_pipeline_tests.jobs import as_resources
from enrollment_pipeline_tests.smtp_servers import (
    CountingInbox,
    DroppingInbox,
    SenderRefusingInbox,
    password_checker,
    received_dates,
    smtp_server,
)

pytestmark = pytest.mark.integration

BROKER_C2 = {"broker_id": "BRK-C2", "name": "Cy Broker", "email": "cy@brokers.example"}


def tick(hour: int) -> datetime:
    """The schedule's tick `hour` hours after the test's submissions (f.T0)."""
    return f.T0 + timedelta(hours=hour)


def ingest(mongo: MongoConnection, *events: dict) -> None:
    parsed = [
        (Source(f"test:{e['event_id']}", {}, None, None), EnrollmentEvent.model_validate(e))
        for e in events
    ]
    apply_parsed(EnrollmentStore.of(mongo), parsed, publish_leads=None)


def smtp(port: int, **settings) -> SmtpEmailSender:
    return SmtpEmailSender(
        host="127.0.0.1",
        port=port,
        sender=settings.pop("sender", "followups@example.com"),
        timeout_s=5,
        **settings,
    )


def run_tick(mongo, sender, as_of: datetime, **kwargs) -> dg.ExecuteInProcessResult:
    """What the schedule's tick launches: its run request, executed."""
    with dg.build_schedule_context(scheduled_execution_time=as_of) as context:
        request = followup_schedule(PipelineSettings())(context)
    return dg.materialize(
        [broker_followup_emails],
        run_config=request.run_config,
        resources=as_resources(
            {
                "mongo": mongo,
                "email": sender,
                "settings": kwargs.get("settings", PipelineSettingsResource()),
            }
        ),
        raise_on_error=kwargs.get("raise_on_error", True),
    )


def recipients(inbox: Inbox, since: int = 0) -> list[str]:
    return sorted(rcpt for _, rcpts, _ in inbox.messages[since:] for rcpt in rcpts)


def followup(mongo: MongoConnection, app_id: str) -> dict:
    return mongo.db()[BROKER_FOLLOWUPS].find_one({"_id": app_id})


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    materializations = result.asset_materializations_for_node("broker_followup_emails")
    if materializations:
        return {k: v.value for k, v in materializations[0].metadata.items()}
    failure = result.failure_data_for_node("broker_followup_emails")
    return {k: v.value for k, v in failure.user_failure_data.metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    return result.failure_data_for_node("broker_followup_emails").error.message


def broker(n: int, address: str) -> dict:
    return {"broker_id": f"BRK-{n}", "name": f"Broker {n}", "email": address}


def pending(mongo: MongoConnection) -> dict[str, str | None]:
    """Each follow-up's pending reason, for those that went PENDING."""
    return {
        doc["_id"]: doc.get("pending_reason")
        for doc in mongo.db()[BROKER_FOLLOWUPS].find({"status": "PENDING"})
    }


def test_eight_hourly_ticks(mongo, smtp_server):
    inbox, port = smtp_server
    ingest(
        mongo,
        f.submitted("APP-A", 0),  # never signs
        f.submitted("APP-B", 0),  # signs after the 3rd email
        f.submitted("APP-C", 0),  # gets a new broker after the 2nd email
        f.submitted("APP-D", 0),  # withdrawn after the 1st email
        f.submitted("APP-E", 0, broker=None),  # no broker, no follow-up
    )
    ada = f.BROKER_A["email"]
    cy = BROKER_C2["email"]
    expected = {
        1: [ada, ada, ada, ada],
        2: [ada, ada, ada],
        3: [ada, ada, cy],  # APP-C's new broker (assigned at 11:10) starts at 1 of 5
        4: [ada, cy],
        5: [ada, cy],
        6: [cy],  # APP-A: 5 emails sent, no 6th: PENDING
        7: [cy],
        8: [],  # APP-C's second broker had its 5: PENDING too
    }
    for hour in range(1, 9):
        before = len(inbox.messages)
        result = run_tick(mongo, smtp(port), tick(hour))
        assert recipients(inbox, before) == sorted(expected[hour]), hour
        metadata = result.asset_materializations_for_node("broker_followup_emails")[0].metadata
        assert metadata["sent"].value == len(expected[hour])
        if hour == 1:
            ingest(mongo, f.withdrawn("APP-D", 70))
        if hour == 2:
            ingest(mongo, f.event("BrokerAssigned", "APP-C", 130, {"broker": BROKER_C2}))
        if hour == 3:
            ingest(mongo, f.signed("APP-B", 190))
        if hour == 1:
            assert metadata["oldest_unsigned_age_hours"].value == 1.0
            assert metadata["due"].value == 4
        if hour == 8:  # APP-A and APP-C wait for a person, each after 5 emails
            assert metadata["open_followups"].value == 2
            rows = [r.data for r in metadata["open_by_retry_count"].value.records]
            assert rows == [{"retry_count": 5, "status": "PENDING", "followups": 2}]
        if hour in (6, 8):
            app = "APP-A" if hour == 6 else "APP-C"
            assert metadata["escalated_to_pending"].value == 1
            assert metadata["newly_pending"].value == [f"{app}: max_emails_reached"]

    a, b, c, d = (followup(mongo, app) for app in ("APP-A", "APP-B", "APP-C", "APP-D"))
    assert (a["status"], a["retry_count"], a["pending_reason"]) == (
        "PENDING",
        5,
        "max_emails_reached",
    )
    assert [x["attempt"] for x in a["attempts"]] == [1, 2, 3, 4, 5]
    assert (b["status"], b["retry_count"]) == ("SIGNED", 3)
    assert (c["status"], c["broker_id"], c["retry_count"]) == ("PENDING", "BRK-C2", 5)
    assert c["attempt_count"] == 7  # attempts never reset: 2 to the first broker, 5 to the second
    assert (d["status"], d["retry_count"]) == ("CLOSED", 1)
    statuses = {
        doc["_id"]: doc["broker_followup_status"] for doc in mongo.db()[APPLICATIONS].find()
    }
    assert statuses == {
        "APP-A": "PENDING",
        "APP-B": "SIGNED",
        "APP-C": "PENDING",
        "APP-D": "CLOSED",
        "APP-E": None,
    }
    # The email says who, which application, what to do, and which reminder it is.
    first = email.message_from_bytes(inbox.messages[0][2], policy=email_policy.default)
    assert "Jane" in first["Subject"] and "medical" in first["Subject"]
    text = first.get_body(("plain",)).get_content()
    assert "sign it in the broker portal" in text and "reminder 1 of 5" in text
    assert first.get_body(("html",)) is not None
    assert "jane.doe@example.com" not in inbox.messages[0][2].decode()  # no contact data
    assert len(received_dates(inbox)) == len(inbox.messages) == 16  # each with a Date


def test_a_rerun_of_the_same_tick_sends_nothing_again(mongo, smtp_server):
    inbox, port = smtp_server
    ingest(mongo, f.submitted("APP-1", 0), f.submitted("APP-2", 0))
    run_tick(mongo, smtp(port), tick(1))
    run_tick(mongo, smtp(port), tick(1))
    assert len(inbox.messages) == 2
    assert followup(mongo, "APP-1")["retry_count"] == 1


@pytest.mark.parametrize(
    ("crash_at", "emails_after_rerun", "attempt_status"),
    [
        ("after_claim", 1, "sent"),
        ("after_send_started", 0, "unknown"),
        ("after_send", 1, "unknown"),
    ],
)
def test_a_crash_between_claim_and_send_never_sends_an_attempt_twice(
    mongo, smtp_server, crash_at, emails_after_rerun, attempt_status
):
    inbox, port = smtp_server
    ingest(mongo, f.submitted("APP-1", 0))
    store = FollowupStore.of(mongo)
    policy = PipelineSettingsResource().followup_policy()

    def crash(step: str) -> None:
        if step == crash_at:
            raise RuntimeError(f"killed {step}")

    with pytest.raises(RuntimeError):
        send_followups(
            store, smtp(port), as_of=tick(1), policy=policy, lease=None, checkpoint=crash
        )
    report = send_followups(store, smtp(port), as_of=tick(1), policy=policy, lease=None)

    assert len(inbox.messages) == emails_after_rerun
    assert (report.sent, report.unknown) == ((1, 0) if attempt_status == "sent" else (0, 1))
    (attempt,) = mongo.db()[FOLLOWUP_ATTEMPTS].find()
    assert (attempt["_id"], attempt["status"]) == ("APP-1:BRK-A:1", attempt_status)
    assert followup(mongo, "APP-1")["retry_count"] == 1  # UNKNOWN counts as sent
    # and is never sent again at that tick
    send_followups(store, smtp(port), as_of=tick(1), policy=policy, lease=None)
    assert len(inbox.messages) == emails_after_rerun


def ingest_brokers(mongo: MongoConnection, count: int) -> dict[str, str]:
    """`count` applications, each with its own broker; returns each one's broker address."""
    addresses = {f"APP-{n:03d}": f"broker-{n:03d}@brokers.example" for n in range(count)}
    ingest(
        mongo,
        *(
            f.submitted(app, 0, broker=broker(n, address))
            for n, (app, address) in enumerate(addresses.items())
        ),
    )
    return addresses


def test_a_crash_in_the_middle_of_a_page_leaves_at_most_concurrency_unknown(mongo, smtp_server):
    inbox, port = smtp_server
    addresses = ingest_brokers(mongo, 40)
    store = FollowupStore.of(mongo)
    policy = PipelineSettingsResource().followup_policy()
    concurrency, crash_after = 4, 12
    sends, lock = [0], threading.Lock()

    def crash(step: str) -> None:
        # After the 12th message went out, the process is gone: no sender records anything
        # more, whichever step it is at (the messages in flight were sent, or not).
        with lock:
            sends[0] += step == "after_send"
            if sends[0] >= crash_after:
                raise RuntimeError(f"killed {step}")

    with pytest.raises(RuntimeError):
        send_followups(
            store,
            smtp(port),
            as_of=tick(1),
            policy=policy,
            lease=None,
            concurrency=concurrency,
            max_per_second=1000,
            checkpoint=crash,
        )
    before_rerun = len(inbox.messages)
    assert crash_after <= before_rerun <= crash_after + concurrency - 1
    rerun = send_followups(
        store,
        smtp(port),
        as_of=tick(1),
        policy=policy,
        lease=None,
        concurrency=concurrency,
        max_per_second=1000,
    )

    attempts = {a["_id"]: a for a in mongo.db()[FOLLOWUP_ATTEMPTS].find()}
    unknown = [key for key, a in attempts.items() if a["status"] == "unknown"]
    assert 1 <= len(unknown) <= concurrency  # only what was in flight, never the page
    assert rerun.unknown == len(unknown) and rerun.sent + rerun.unknown == len(addresses)
    assert sorted(a["status"] for a in attempts.values()) == sorted(
        ["sent"] * (len(addresses) - len(unknown)) + ["unknown"] * len(unknown)
    )
    # No broker got an attempt twice; every one not left UNKNOWN got it exactly once.
    received = Counter(rcpt for _, rcpts, _ in inbox.messages for rcpt in rcpts)
    assert max(received.values()) == 1
    unknown_apps = {attempts[key]["app_id"] for key in unknown}
    for app, address in addresses.items():
        if app not in unknown_apps:
            assert received[address] == 1, app
        assert followup(mongo, app)["retry_count"] == 1  # UNKNOWN counts as sent
    send_followups(store, smtp(port), as_of=tick(1), policy=policy, lease=None, concurrency=4)
    assert len(inbox.messages) == sum(received.values())  # nothing again at that tick


def test_four_senders_use_four_connections_and_send_every_email_once(mongo):
    addresses = ingest_brokers(mongo, 40)
    settings = PipelineSettingsResource(email_concurrency=4, email_max_per_second=1000)
    with smtp_server(CountingInbox()) as (inbox, port):
        result = run_tick(mongo, smtp(port), tick(1), settings=settings)
    assert isinstance(inbox, CountingInbox)
    assert inbox.most_open == 4  # aiosmtpd sessions at once
    assert len(set(inbox.peers)) == 4  # the messages came over four connections
    assert recipients(inbox) == sorted(addresses.values())  # every email, once
    assert metadata_of(result)["sent"] == 40
    attempts = list(mongo.db()[FOLLOWUP_ATTEMPTS].find())
    assert len(attempts) == 40 and {a["status"] for a in attempts} == {"sent"}
    assert all(a["send_started_at"] and a["message_id"] for a in attempts)


def test_the_pace_holds_for_all_senders_together(mongo):
    ingest_brokers(mongo, 40)
    policy = PipelineSettingsResource().followup_policy()
    with smtp_server(CountingInbox()) as (inbox, port):
        started = time.monotonic()
        report = send_followups(
            FollowupStore.of(mongo),
            smtp(port),
            as_of=tick(1),
            policy=policy,
            lease=None,
            concurrency=4,
            max_per_second=20,
        )
        seconds = time.monotonic() - started
    assert isinstance(inbox, CountingInbox)
    assert report.sent == len(inbox.messages) == 40 and inbox.most_open == 4
    # 40 sends at 20 a second: 39 gaps of 50 ms from the first to the last (the arrivals
    # differ from the paced instants by each message's own latency).
    assert seconds >= 1.9
    assert inbox.arrivals[-1] - inbox.arrivals[0] >= 1.8


def test_smtp_down_for_a_tick_counts_nothing_and_the_next_tick_sends_all(mongo, smtp_server):
    inbox, port = smtp_server
    ingest(mongo, f.submitted("APP-1", 0), f.submitted("APP-2", 0))
    (closed_port,) = free_ports(1)

    down = run_tick(mongo, smtp(closed_port), tick(1), raise_on_error=False)

    assert not down.success  # red in the UI
    assert [followup(mongo, a)["retry_count"] for a in ("APP-1", "APP-2")] == [0, 0]
    run_tick(mongo, smtp(port), tick(2))
    assert recipients(inbox) == [f.BROKER_A["email"]] * 2
    assert [followup(mongo, a)["retry_count"] for a in ("APP-1", "APP-2")] == [1, 1]


def test_a_rejected_recipient_goes_pending_and_the_others_are_sent(mongo, smtp_server):
    inbox, port = smtp_server
    rejected = {"broker_id": "BRK-X", "name": "Xi", "email": "xi@invalid.example"}
    ingest(mongo, f.submitted("APP-1", 0, broker=rejected), f.submitted("APP-2", 0))

    result = run_tick(mongo, smtp(port), tick(1))

    assert recipients(inbox) == [f.BROKER_A["email"]]
    bad = followup(mongo, "APP-1")
    assert (bad["status"], bad["pending_reason"]) == ("PENDING", "recipient_rejected")
    assert (
        mongo.db()[APPLICATIONS].find_one({"_id": "APP-1"})["broker_followup_status"] == "PENDING"
    )
    metadata = result.asset_materializations_for_node("broker_followup_emails")[0].metadata
    assert (metadata["sent"].value, metadata["escalated_to_pending"].value) == (1, 1)
    run_tick(mongo, smtp(port), tick(2))  # PENDING: no more attempts
    assert recipients(inbox) == [f.BROKER_A["email"]] * 2


def test_a_broker_name_with_crlf_cannot_inject_a_header(mongo, smtp_server):
    inbox, port = smtp_server
    evil = {
        "broker_id": "BRK-E",
        "name": "Eve\r\nBcc: victim@example.com\r\nSubject: pwned",
        "email": "eve@brokers.example",
    }
    ingest(mongo, f.submitted("APP-1", 0, broker=evil))

    run_tick(mongo, smtp(port), tick(1))

    ((_, rcpts, raw),) = inbox.messages
    assert rcpts == ["eve@brokers.example"]
    message = email.message_from_bytes(raw, policy=email_policy.default)
    assert message["Bcc"] is None
    assert message.get_all("Subject") == [message["Subject"]]
    assert "pwned" not in message["Subject"]
    assert "victim@example.com" not in str(message["To"]).split("<")[-1]


def test_an_application_older_than_the_cutoff_expires_and_ops_get_one_digest(mongo, smtp_server):
    inbox, port = smtp_server
    settings = PipelineSettingsResource(ops_email="ops@example.com")
    ingest(
        mongo,
        f.submitted("APP-OLD", 0),
        f.submitted("APP-OLD-2", 1),
        f.submitted("APP-NEW", 60 * 24 * 31),
    )

    run_tick(mongo, smtp(port), tick(24 * 31 + 1), settings=settings)

    assert recipients(inbox) == sorted([f.BROKER_A["email"], "ops@example.com"])
    for app in ("APP-OLD", "APP-OLD-2"):
        doc = followup(mongo, app)
        assert (doc["status"], doc["pending_reason"], doc["retry_count"]) == (
            "PENDING",
            "expired",
            0,
        )
    digest = next(raw for _, rcpts, raw in inbox.messages if rcpts == ["ops@example.com"])
    assert b"APP-OLD: expired" in digest and b"APP-OLD-2: expired" in digest
    run_tick(
        mongo, smtp(port), tick(24 * 31 + 2), settings=settings
    )  # nothing newly PENDING: no digest
    assert sum(rcpts == ["ops@example.com"] for _, rcpts, _ in inbox.messages) == 1


def test_quiet_hours_hold_emails_until_they_end(mongo, smtp_server):
    inbox, port = smtp_server
    settings = PipelineSettingsResource(followup_quiet_hours="20-07")
    ingest(mongo, f.submitted("APP-1", 0))  # 09:00 UTC

    run_tick(mongo, smtp(port), tick(13), settings=settings)  # 22:00 UTC
    assert inbox.messages == []
    run_tick(mongo, smtp(port), tick(22), settings=settings)  # 07:00 UTC
    assert recipients(inbox) == [f.BROKER_A["email"]]


def test_ses_backend_through_moto(mongo, moto_endpoint, aws_credentials):
    ses = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_endpoint)
    ses.create_email_identity(EmailIdentity="followups@example.com")
    quota = boto3.client("ses", region_name="us-east-1", endpoint_url=moto_endpoint)
    before = quota.get_send_quota()["SentLast24Hours"]
    ingest(mongo, f.submitted("APP-1", 0), f.submitted("APP-2", 0))
    sender = SesEmailSender(
        sender="followups@example.com",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )

    run_tick(mongo, sender, tick(1))

    assert quota.get_send_quota()["SentLast24Hours"] == before + 2
    assert followup(mongo, "APP-1")["retry_count"] == 1


def test_the_schedule_is_hourly_off_by_default_and_passes_its_tick():
    schedule = followup_schedule(PipelineSettings())
    assert schedule.name == "hourly_broker_followups"
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.build_schedule_context(scheduled_execution_time=tick(1)) as context:
        request = schedule(context)
    config = request.run_config["ops"]["broker_followup_emails"]["config"]
    assert config == {"as_of": tick(1).isoformat()}


# The addresses users reported: each passes the event schema's pattern, none is one mailbox a
# server without SMTPUTF8 can take. They sort before the ordinary brokers.
ODD_ADDRESSES = {
    "APP-1": "a,b@example.test",
    "APP-2": '"a@example.test',
    "APP-3": "jürgen@example.test",
    "APP-4": "x@exämple.test",
}
ORDINARY = {"APP-5": "ada@brokers.example", "APP-6": "bo@brokers.example"}


def ingest_odd_and_ordinary(mongo: MongoConnection) -> None:
    addresses = {**ODD_ADDRESSES, **ORDINARY}
    ingest(
        mongo,
        *(
            f.submitted(app, 0, broker=broker(n, address))
            for n, (app, address) in enumerate(sorted(addresses.items()))
        ),
    )


def test_odd_addresses_go_pending_and_the_ordinary_brokers_get_every_hourly_email(mongo):
    ingest_odd_and_ordinary(mongo)
    with smtp_server(enable_SMTPUTF8=False) as (inbox, port):
        first = run_tick(mongo, smtp(port), tick(1))
        assert recipients(inbox) == sorted(ORDINARY.values())
        second = run_tick(mongo, smtp(port), tick(2))

    assert first.success and second.success
    assert recipients(inbox) == sorted([*ORDINARY.values()] * 2)  # every tick, both brokers
    assert (metadata_of(first)["invalid_address"], metadata_of(first)["sent"]) == (4, 2)
    assert sorted(metadata_of(first)["newly_pending"]) == [
        f"{app}: invalid_address" for app in sorted(ODD_ADDRESSES)
    ]
    assert (metadata_of(second)["invalid_address"], metadata_of(second)["sent"]) == (0, 2)
    assert pending(mongo) == dict.fromkeys(ODD_ADDRESSES, "invalid_address")
    attempts = {a["app_id"]: a for a in mongo.db()[FOLLOWUP_ATTEMPTS].find()}
    for app in ODD_ADDRESSES:
        assert (attempts[app]["status"], attempts[app]["reason"]) == ("failed", "invalid_address")
        assert "send_started_at" not in attempts[app]  # refused before anything could leave
        assert followup(mongo, app)["retry_count"] == 0
    for app in ORDINARY:
        assert followup(mongo, app)["retry_count"] == 2
    statuses = {d["_id"]: d["broker_followup_status"] for d in mongo.db()[APPLICATIONS].find()}
    assert statuses == {
        **dict.fromkeys(ODD_ADDRESSES, "PENDING"),
        **dict.fromkeys(ORDINARY, "AWAITING_SIGNATURE"),
    }
    dates = received_dates(inbox)  # every email has a Date: the real time it was sent
    assert len(dates) == 4 and all(abs(datetime.now(UTC) - d) < timedelta(minutes=5) for d in dates)


def test_a_server_with_smtputf8_gets_the_non_ascii_addresses(mongo):
    ingest_odd_and_ordinary(mongo)
    with smtp_server(enable_SMTPUTF8=True) as (inbox, port):
        result = run_tick(mongo, smtp(port), tick(1))

    assert recipients(inbox) == sorted(
        [ODD_ADDRESSES["APP-3"], ODD_ADDRESSES["APP-4"], *ORDINARY.values()]
    )
    assert metadata_of(result)["invalid_address"] == 2
    assert pending(mongo) == {"APP-1": "invalid_address", "APP-2": "invalid_address"}
    jurgen = next(raw for _, rcpts, raw in inbox.messages if rcpts == ["jürgen@example.test"])
    message = email.message_from_string(jurgen.decode("utf-8"), policy=email_policy.default)
    assert [a.addr_spec for a in message["To"].addresses] == ["jürgen@example.test"]
    assert len(received_dates(inbox)) == 4


def test_a_refused_login_fails_the_run_naming_the_settings_and_the_fix_sends_all(mongo):
    ingest(mongo, f.submitted("APP-1", 0), f.submitted("APP-2", 0))
    checker = password_checker("followups", "right-password")
    with smtp_server(authenticator=checker, auth_require_tls=False) as (inbox, port):
        wrong = smtp(port, username="followups", password="wrong-password")
        refused = run_tick(mongo, wrong, tick(1), raise_on_error=False)

        message = failure_text(refused)
        assert "SMTP_USERNAME" in message and "SMTP_PASSWORD" in message
        assert "wrong-password" not in message
        assert pending(mongo) == {}
        assert [followup(mongo, a)["retry_count"] for a in ("APP-1", "APP-2")] == [0, 0]

        right = smtp(port, username="followups", password="right-password")
        run_tick(mongo, right, tick(1))  # the same hour, re-run after the fix
    assert recipients(inbox) == [f.BROKER_A["email"]] * 2
    assert [followup(mongo, a)["retry_count"] for a in ("APP-1", "APP-2")] == [1, 1]


def test_a_refused_sender_fails_the_run_naming_email_from_and_the_fix_sends_all(mongo):
    ingest(mongo, f.submitted("APP-1", 0), f.submitted("APP-2", 0))
    with smtp_server(SenderRefusingInbox(allowed="followups@example.com")) as (inbox, port):
        refused = run_tick(
            mongo, smtp(port, sender="typo@example.com"), tick(1), raise_on_error=False
        )

        assert "EMAIL_FROM" in failure_text(refused)
        assert pending(mongo) == {}
        assert inbox.refused_senders == ["typo@example.com"]  # stopped at the first follow-up
        run_tick(mongo, smtp(port), tick(1))
    assert recipients(inbox) == [f.BROKER_A["email"]] * 2
    assert [followup(mongo, a)["retry_count"] for a in ("APP-1", "APP-2")] == [1, 1]


def test_a_connection_lost_after_the_message_is_unknown_and_never_sent_again(mongo):
    lost = {"broker_id": "BRK-L", "name": "Lu", "email": "lu@brokers.example"}
    ingest(mongo, f.submitted("APP-1", 0, broker=lost), f.submitted("APP-2", 0))
    with smtp_server(DroppingInbox(drop_for="lu@brokers.example")) as (inbox, port):
        dropped = run_tick(mongo, smtp(port), tick(1), raise_on_error=False)

        assert "SMTP_HOST" in failure_text(dropped)
        assert metadata_of(dropped)["unknown"] == 1
        assert recipients(inbox) == ["lu@brokers.example"]  # APP-2 waits for the next run
        (attempt,) = mongo.db()[FOLLOWUP_ATTEMPTS].find({"app_id": "APP-1"})
        assert attempt["status"] == "unknown"

        rerun = run_tick(mongo, smtp(port), tick(1))  # the same hour again
        assert rerun.success
        assert recipients(inbox) == sorted(["lu@brokers.example", f.BROKER_A["email"]])

    assert sum(rcpts == ["lu@brokers.example"] for _, rcpts, _ in inbox.messages) == 1
    assert followup(mongo, "APP-1")["retry_count"] == 1  # counted once, as sent
    assert [a["status"] for a in followup(mongo, "APP-1")["attempts"]] == ["unknown"]
    assert pending(mongo) == {}


def test_ses_unverified_sender_fails_the_run_naming_email_from(
    mongo, moto_endpoint, aws_credentials
):
    ingest(mongo, f.submitted("APP-1", 0))
    sender = SesEmailSender(
        sender="not-verified@example.org",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )

    result = run_tick(mongo, sender, tick(1), raise_on_error=False)

    assert "EMAIL_FROM" in failure_text(result)
    assert pending(mongo) == {}
    assert followup(mongo, "APP-1")["retry_count"] == 0
