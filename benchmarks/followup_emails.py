"""How fast the follow-up job sends: N due follow-ups, one run, a real SMTP server (or SES).

Fills a fresh database with N broker-sold applications (through the same `apply_parsed` as
ingestion), then times one `send_followups` at an `as_of` where all are due, through the
SMTP server the Contract-6 variables name (the local stack's sink), with `EMAIL_CONCURRENCY`
senders (or `--concurrency`), and, with `--ses`, the SES path against moto's server started
here. In the same run it measures the raw limit of that SMTP server: the same follow-up
message sent with nothing else (smtplib, prebuilt bytes) over one connection, and over
`--concurrency` connections at once, so the job's emails/s read against what the server takes
on this machine now. It counts the job's MongoDB commands (pymongo command monitoring), which
do not depend on the machine. `EMAIL_MAX_PER_SECOND` paces real runs (10/s by default, for
SES quotas); this benchmark measures the pipeline's own cost, so it does not pace unless
`--max-per-second` says so.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/followup_emails.py --followups 3000 --ses 1000
"""

from __future__ import annotations

import argparse
import os
import shlex
import smtplib
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
from moto.server import ThreadedMotoServer
from pymongo import monitoring

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.followup_rules import FollowupPolicy, followup_email
from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import (
    EmailSender,
    OutgoingEmail,
    SesEmailSender,
    SmtpEmailSender,
    build_message,
)
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.followups.run import send_followups
from enrollment_pipeline.lib.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.lib.mongo.followup_store import FollowupStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import PipelineSettings

SUBMITTED_AT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def submitted(app_id: str) -> EnrollmentEvent:
    return EnrollmentEvent.model_validate(
        {
            "event_id": f"{app_id}:submitted",
            "event_type": "ApplicationSubmitted",
            "schema_version": 1,
            "occurred_at": SUBMITTED_AT.isoformat(),
            "application_id": app_id,
            "payload": {
                "applicant": {
                    "first_name": "Jane",
                    "last_name": "Doe",
                    "email": "jane@example.com",
                    "state": "CA",
                },
                "plan": {"plan_id": "P1", "product": "MEDICAL", "coverage_start": "2027-01-01"},
                "channel": "BROKER",
                "broker": {
                    "broker_id": f"BRK-{app_id}",
                    "name": "Ada Broker",
                    "email": f"broker-{app_id.lower()}@brokers.example",
                },
                "marketing_consent": False,
            },
        }
    )


def fill(settings: PipelineSettings, count: int) -> MongoConnection:
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"followups_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    store = EnrollmentStore.of(mongo)
    for start in range(0, count, 10_000):
        events = [submitted(f"APP-{i:07d}") for i in range(start, min(count, start + 10_000))]
        apply_parsed(
            store,
            [(Source(e.event_id, {}, None, None), e) for e in events],
            publish_leads=None,
        )
    return mongo


class Commands(monitoring.CommandListener):
    """MongoDB commands by name, and the statements of the update commands."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.update_statements = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1
        if event.command_name == "update":
            self.update_statements += len(event.command["updates"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.counts[f"{event.command_name} (failed)"] += 1


def raw_smtp(
    mongo: MongoConnection, host: str, port: int, sender: str, *, messages: int, connections: int
) -> float:
    """Messages a second the server takes with nothing else: the first follow-up's email,
    built once, sent `messages` times over `connections` connections at once."""
    store = FollowupStore.of(mongo)
    followup = next(store.due_pages(SUBMITTED_AT + timedelta(hours=1), page_size=1))[0]
    email = followup_email(
        followup,
        store.applications([followup["_id"]]).get(followup["_id"]),
        attempt_in_cycle=1,
        max_emails=5,
    )
    prepared = build_message(
        sender,
        OutgoingEmail(email.to, email.subject, email.text, html=email.html, to_name=email.to_name),
        now=datetime.now(UTC),
        smtputf8=False,
    )
    share = [messages // connections + (i < messages % connections) for i in range(connections)]
    clients = [smtplib.SMTP(host, port, timeout=10) for _ in range(connections)]
    for client in clients:
        client.ehlo()
    ready = threading.Barrier(connections + 1)

    def send(client: smtplib.SMTP, count: int) -> None:
        ready.wait()
        for _ in range(count):
            client.sendmail(prepared.envelope_from, [prepared.envelope_to], prepared.data)

    threads = [
        threading.Thread(target=send, args=(client, count))
        for client, count in zip(clients, share, strict=True)
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for client in clients:
        client.quit()
    return messages / seconds


def timed_run(
    mongo: MongoConnection,
    sender: EmailSender,
    *,
    max_per_second: float,
    concurrency: int,
    commands: Commands,
    label: str,
    count: int,
) -> float:
    policy = FollowupPolicy(max_age=timedelta(days=3650))
    before = Counter(commands.counts)
    statements = commands.update_statements
    started = time.perf_counter()
    report = send_followups(
        FollowupStore.of(mongo),
        sender,
        as_of=SUBMITTED_AT + timedelta(hours=1),
        policy=policy,
        max_per_second=max_per_second,
        concurrency=concurrency,
        lease=None,
    )
    seconds = time.perf_counter() - started
    assert report.sent == count, report
    used = commands.counts - before
    rate = report.sent / seconds
    print(
        f"{label}, {concurrency} at once: {report.sent:,} emails in {seconds:.1f} s, "
        f"{rate:,.0f} emails/s (due {report.due:,}, failed {report.failed}, unknown "
        f"{report.unknown}); MongoDB: {sum(used.values()):,} commands "
        f"({', '.join(f'{name} {n:,}' for name, n in used.most_common())}), "
        f"{commands.update_statements - statements:,} update statements"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followups", type=int, default=3_000)
    parser.add_argument("--ses", type=int, default=0, help="also this many through SES on moto")
    parser.add_argument("--max-per-second", type=float, default=1e9)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="senders at once (EMAIL_CONCURRENCY)"
    )
    parser.add_argument(
        "--raw", type=int, default=None, help="messages of each raw SMTP measure (N)"
    )
    args = parser.parse_args()
    commands = Commands()
    monitoring.register(commands)  # before any client exists
    settings = PipelineSettings()
    concurrency = args.concurrency or settings.email_concurrency
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print(
        "# reproduce: enrollment-pipeline stack up && export $(enrollment-pipeline stack env) "
        f"&& EMAIL_CONCURRENCY={concurrency} {command}"
    )
    host, port = settings.smtp_host, settings.smtp_port
    raw = args.raw or args.followups

    mongo = fill(settings, args.followups)
    try:
        one = raw_smtp(mongo, host, port, settings.email_from, messages=raw, connections=1)
        print(f"raw SMTP {host}:{port}, 1 connection: {raw:,} messages, {one:,.0f} messages/s")
        many = raw_smtp(
            mongo, host, port, settings.email_from, messages=raw, connections=concurrency
        )
        print(
            f"raw SMTP {host}:{port}, {concurrency} connections: {raw:,} messages, "
            f"{many:,.0f} messages/s"
        )
        smtp = SmtpEmailSender(host=host, port=port, sender=settings.email_from)
        rate = timed_run(
            mongo,
            smtp,
            max_per_second=args.max_per_second,
            concurrency=concurrency,
            commands=commands,
            label=f"follow-up run, SMTP {host}:{port}",
            count=args.followups,
        )
        print(
            f"follow-up run: {rate / one:.0%} of one raw connection, "
            f"{rate / many:.0%} of {concurrency} raw connections"
        )
    finally:
        mongo.client().drop_database(mongo.database)

    if args.ses:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "benchmark")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark")
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
        boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint).create_email_identity(
            EmailIdentity=settings.email_from
        )
        mongo = fill(settings, args.ses)
        try:
            ses = SesEmailSender(
                sender=settings.email_from,
                aws=AwsConfig(region_name="us-east-1", endpoint_url=endpoint),
            )
            timed_run(
                mongo,
                ses,
                max_per_second=args.max_per_second,
                concurrency=concurrency,
                commands=commands,
                label="follow-up run, SES (moto server)",
                count=args.ses,
            )
        finally:
            mongo.client().drop_database(mongo.database)
            moto.stop()


if __name__ == "__main__":
    main()
