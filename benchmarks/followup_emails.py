"""How fast the follow-up job sends: N due follow-ups, one run, a real SMTP server (or SES).

Fills a fresh database with N broker-sold applications (through the same `apply_parsed` as
ingestion), then times one `send_followups` at an `as_of` where all are due, through the
SMTP server the Contract-6 variables name (the local stack's sink), and, with `--ses`, the SES
path against moto's server started here. `EMAIL_MAX_PER_SECOND` paces real runs (10/s by
default, for SES quotas); this benchmark measures the pipeline's own cost, so it does not pace
unless `--max-per-second` says so.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/followup_emails.py --followups 10000 --ses 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
from moto.server import ThreadedMotoServer

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.followup_rules import FollowupPolicy
from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import SesEmailSender, SmtpEmailSender
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


def fill(settings: PipelineSettings, count: int):
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


def timed_run(mongo, sender, max_per_second: float, label: str, count: int) -> None:
    policy = FollowupPolicy(max_age=timedelta(days=3650))
    with sender.session() as send:
        started = time.perf_counter()
        report = send_followups(
            FollowupStore.of(mongo),
            send,
            as_of=SUBMITTED_AT + timedelta(hours=1),
            policy=policy,
            max_per_second=max_per_second,
            lease=None,
        )
        seconds = time.perf_counter() - started
    assert report.sent == count, report
    print(
        f"{label}: {report.sent:,} emails in {seconds:.1f} s, "
        f"{report.sent / seconds:,.0f} emails/s "
        f"(due {report.due:,}, failed {report.failed}, unknown {report.unknown})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followups", type=int, default=10_000)
    parser.add_argument("--ses", type=int, default=0, help="also this many through SES on moto")
    parser.add_argument("--max-per-second", type=float, default=1e9)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    settings = PipelineSettings()

    mongo = fill(settings, args.followups)
    try:
        smtp = SmtpEmailSender(
            host=settings.smtp_host, port=settings.smtp_port, sender=settings.email_from
        )
        timed_run(
            mongo,
            smtp,
            args.max_per_second,
            f"SMTP {settings.smtp_host}:{settings.smtp_port}",
            args.followups,
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
            timed_run(mongo, ses, args.max_per_second, "SES (moto server)", args.ses)
        finally:
            mongo.client().drop_database(mongo.database)
            moto.stop()


if __name__ == "__main__":
    main()
