"""`enrollment-pipeline status` and `explain APP_ID` (Contract 6): read-only views for the
operator and for support staff, thin commands over `lib/status.py` and `lib/explain.py`."""

from __future__ import annotations

import json
import os
from datetime import datetime

import click

from enrollment_pipeline.cli.clients import enrollment_store
from enrollment_pipeline.cli.output import json_default, print_json, utc
from enrollment_pipeline.lib.settings_errors import check
from enrollment_pipeline.settings import IngestSettings, KafkaSettings, MongoSettings

JSON = click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")


@click.command()
@JSON
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Is the pipeline healthy? Sensors and the schedule (on/off, last tick), the last run of
    each job, lag per consumer group, open dead letters by reason, parked and refused leads,
    PENDING follow-ups. Times are UTC.

    \b
    Exit code:
      0  healthy
      2  something needs a person: a consumer group lags more than
         INGEST_MAX_CONSUMER_LAG; the last run of a job failed or was canceled; a
         sensor is off, failed its last tick, gave up on a range, or has not ticked
         for 5 minutes (no daemon?); the schedule is on and failed its last tick; a
         lead was refused by the CRM
      1  could not check: Kafka or MongoDB did not answer, or the Dagster instance
         at DAGSTER_HOME could not be opened
    Dead letters, parked leads (retried on their own) and PENDING follow-ups are
    shown but are not problems. Without DAGSTER_HOME the Dagster part is unknown:
    a warning, not an exit code (export $(enrollment-pipeline stack env) sets it).

    \b
    Example:
      enrollment-pipeline status --json | jq .problems
    """
    from enrollment_pipeline.lib.clients.kafka import KafkaClient
    from enrollment_pipeline.lib.clients.mongo import MongoConnection
    from enrollment_pipeline.lib.status import check_status

    check(KafkaSettings, MongoSettings, IngestSettings)
    kafka_settings = KafkaSettings()
    home = os.environ.get("DAGSTER_HOME") or None

    def instance():
        import dagster as dg

        return dg.DagsterInstance.get()

    with (
        KafkaClient.from_settings(kafka_settings) as kafka,
        MongoConnection.from_settings(MongoSettings()) as mongo,
    ):
        report = check_status(
            kafka=kafka,
            mongo=mongo,
            enrollment_topic=kafka_settings.enrollment_topic,
            lead_topic=kafka_settings.lead_topic,
            max_consumer_lag=IngestSettings().ingest_max_consumer_lag,
            instance=instance if home else None,
            dagster_home=home,
        )
    if as_json:
        print_json(report.to_json())
    else:
        _print_status(report)
    ctx.exit(report.exit_code)


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return ""
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _print_status(report) -> None:
    now = report.checked_at
    out = click.echo
    out(f"{utc(now)}: {report.verdict} (exit {report.exit_code})")
    out("")
    if report.instigators is None:
        out("Sensors, schedule, runs: unknown (DAGSTER_HOME not set or not readable)")
    else:
        out(f"Sensors and schedule (DAGSTER_HOME={report.dagster_home})")
        for item in report.instigators:
            tick = item.last_tick
            last = (
                "no tick yet"
                if tick is None
                else f"last tick {utc(tick.at)} ({_age(tick.at, now)}) {tick.status}"
                + (f": {tick.message[:100]}" if tick.message else "")
            )
            out(f"  {item.name:<26} {item.kind:<8} {'on' if item.on else 'off':<4} {last}")
        out("Last runs")
        for run in report.last_runs or []:
            if run.status is None:
                out(f"  {run.job:<28} never")
            else:
                out(
                    f"  {run.job:<28} {run.status:<9} {utc(run.at)} ({_age(run.at, now)})"
                    f"  {run.run_id}"
                )
    if report.lag is not None:
        out(f"Lag (over {report.max_consumer_lag:,} needs a person: INGEST_MAX_CONSUMER_LAG)")
        for group in report.lag:
            out(f"  {group.group:<26} {group.topic:<28} {group.lag:>12,}")
    if report.dead_letters is not None:
        reasons = ", ".join(f"{r} {n:,}" for r, n in report.dead_letters.items())
        total = sum(report.dead_letters.values())
        out(f"Dead letters open: {total:,}" + (f" ({reasons})" if reasons else ""))
    if report.leads is not None:
        out(
            f"Leads waiting: {report.leads['parked']:,} parked (retried on their own), "
            f"{report.leads['refused']:,} refused"
        )
    if report.pending_followups is not None:
        out(f"Follow-ups PENDING (brokers to chase): {report.pending_followups:,}")
    for title, items in (
        ("Needs a person", report.problems),
        ("Could not check", report.not_checked),
        ("Warnings", report.warnings),
    ):
        if items:
            out("")
            out(f"{title}:")
            for item in items:
                out(f"  - {item}")


@click.command()
@click.argument("application_id")
@click.option("--reveal", is_flag=True, help="Show contact values (names, email, phone, …).")
@JSON
def explain(application_id: str, reveal: bool, as_json: bool) -> None:
    """Everything the pipeline knows of one application, for when a broker calls.

    Its events in fold order with their source (Kafka topic:partition:offset or archive
    file:line) and what each did (applied, or the anomaly's reason); its document; its
    follow-up with retry count, next due, status, pending reason and every attempt; its
    leads and where each is (delivered, parked, refused); the dead letters that name it.
    Contact values are masked unless --reveal. Times are UTC. Exit code 1 when nothing
    names the application.

    \b
    Example:
      enrollment-pipeline explain APP-000123
    """
    from enrollment_pipeline.lib.explain import explain as explained

    check(MongoSettings)
    found = explained(enrollment_store(), application_id, reveal=reveal)
    if as_json:
        print_json(found)
    else:
        _print_explained(found, reveal)
    if not found["found"]:
        if not as_json:
            click.echo(
                f"Error: nothing names {application_id!r}: no event, document, follow-up, lead "
                "or dead letter (application ids are case-sensitive)",
                err=True,
            )
        raise click.exceptions.Exit(1)


def _when(value) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return utc(value) if isinstance(value, datetime) else "-"


def _print_explained(found: dict, reveal: bool) -> None:
    out = click.echo
    if not found["found"]:
        return
    doc = found["document"] or {}
    masked = "" if reveal else " (contact values masked; --reveal shows them)"
    out(
        f"{found['application_id']}: {doc.get('status') or 'no document'}, "
        f"{len(found['events'])} events{masked}"
    )
    for erasure in found.get("erasures") or []:
        out(
            f"Erased {_when(erasure.get('started_at'))} (erasure {erasure['_id']}): "
            f"{erasure.get('reason')}"
        )
    out("")
    out("Events, in fold order")
    for event in found["events"]:
        source = event["source"].get("id") or json.dumps(event["source"]) or "-"
        leads = event["leads_published"]
        lead_note = f"  leads: {len(leads)}" if leads else ""
        out(
            f"  {_when(event['occurred_at'])}  {event['event_type']:<24} {event['effect']:<34}"
            f" {source}  {event['event_id']}{lead_note}"
        )
    out("")
    out("Document")
    if doc:
        shown = {k: v for k, v in doc.items() if k != "fold"}
        text = json.dumps(shown, indent=2, default=json_default, ensure_ascii=False)
        out("\n".join(f"  {line}" for line in text.splitlines()))
    else:
        out("  none")
    out("")
    followup = found["followup"]
    if followup is None:
        out("Follow-up: none")
    else:
        reason = f" ({followup.get('pending_reason')})" if followup.get("pending_reason") else ""
        out(
            f"Follow-up: {followup.get('status')}{reason}, broker {followup.get('broker_id')}, "
            f"{followup.get('retry_count', 0)} email(s) sent, next due "
            f"{_when(followup.get('next_due_at'))}"
        )
        for attempt in followup.get("attempt_records", []):
            at = (
                attempt.get("sent_at")
                or attempt.get("resolved_at")
                or attempt.get("send_started_at")
                or attempt.get("claimed_at")
            )
            why = attempt.get("reason") or attempt.get("detail")
            error = f"  {why}" if why else ""
            out(f"  {attempt['_id']:<40} {attempt.get('status', ''):<8} {_when(at)}{error}")
    out("")
    out("Leads" if found["leads"] else "Leads: none")
    for lead in found["leads"]:
        out(f"  {lead['lead_event_id']}  {lead.get('lead_status') or '':<9} {lead['where']}")
    out("")
    out("Dead letters" if found["dead_letters"] else "Dead letters: none")
    for letter in found["dead_letters"]:
        out(
            f"  {letter['id']}  {letter['reason']}  {letter['status']}  "
            f"{_when(letter.get('last_seen_at'))}  {(letter.get('detail') or '')[:100]}"
        )
