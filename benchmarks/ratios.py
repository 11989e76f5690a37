"""Every pipeline figure beside the raw limit of its stage, measured in one run on one stack.

Runs, one after the other on the stack the Contract-6 variables name (nothing else should run):

  raw limits    `insert_many` docs/s; `UpdateOne` statements/s in commands of
                MONGO_MAX_WRITES_PER_COMMAND with 1 and MONGO_WRITE_COMMANDS_IN_FLIGHT commands
                at once (raw_limits.py); SMTP messages/s over one connection (followup_emails.py)
  backfill      `backfill_archive.py`: N archived events into an empty read model, one run
  rebuild       into an empty `applications`, then after every document was made stale
  stream        `stream_scale.py`: the 20,000-application stream through sensor and job
  follow-ups    `followup_emails.py`: one run over N due follow-ups to the stack's SMTP sink
  freshness     `freshness.py`: produce -> document through `dagster dev`, sensor on

and prints the table of the README's benchmark section.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/ratios.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import backfill_archive
import followup_emails
import freshness
import raw_limits
import stream_scale
from pymongo import monitoring

from enrollment_pipeline.lib.clients.email import SmtpEmailSender
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.settings import PipelineSettings


@dataclass
class Row:
    path: str
    measured: str
    limit: str
    share: str

    def markdown(self) -> str:
        return f"| {self.path} | {self.measured} | {self.limit} | {self.share} |"


def _share(value: float, limit: float) -> str:
    return f"{value / limit:.0%}" if limit else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="backfill's archived events")
    parser.add_argument("--large", type=int, default=0, help="also a backfill of this many")
    parser.add_argument("--applications", type=int, default=20_000, help="the stream's")
    parser.add_argument("--followups", type=int, default=3_000)
    parser.add_argument("--fresh-events", type=int, default=24)
    parser.add_argument("--fresh-every", type=float, default=4.0)
    args = parser.parse_args()
    command = " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    print(f"$ {command}", flush=True)
    commands = followup_emails.Commands()
    monitoring.register(commands)  # before any client exists
    settings = PipelineSettings()
    with MongoConnection.from_settings(settings) as mongo:
        writer = mongo.writer()
    per_command, in_flight = writer.updates_per_command, writer.commands_in_flight
    rows: list[Row] = []
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    # The raw limits first, then the pipeline, so each figure meets the limit of its stage.
    insert_rate = raw_limits.insert_many_rate(settings.mongo_uri)
    find = raw_limits.find_rate(settings.mongo_uri)
    progress(f"raw insert_many: {insert_rate:,.0f} docs/s, streamed find: {find:,.0f} docs/s")
    update_one = raw_limits.update_rate(settings.mongo_uri, per_command=per_command, in_flight=1)
    update_many = raw_limits.update_rate(
        settings.mongo_uri, per_command=per_command, in_flight=in_flight
    )
    progress(
        f"raw UpdateOne in commands of {per_command}: {update_one:,.0f}/s (1 in flight), "
        f"{update_many:,.0f}/s ({in_flight} in flight)"
    )

    folder = Path(tempfile.mkdtemp(prefix="ratios-archive-"))
    try:
        for events in [args.events, *([args.large] if args.large else [])]:
            mongo = backfill_archive.fresh_mongo(settings, "ratios_backfill")
            try:
                shutil.rmtree(folder, ignore_errors=True)
                written = backfill_archive.write_history(folder, events, seed=31, days=120)
                figures = backfill_archive.backfill(settings, mongo, folder, written)
                progress(
                    f"backfill of {figures.lines:,} lines: {figures.events_per_second:,.0f} "
                    f"events/s, peak {figures.peak_mb:,.0f} MB"
                )
                rows.append(
                    Row(
                        f"backfill, {figures.lines:,} archived events into an empty read model "
                        f"(peak {figures.peak_mb:,.0f} MB resident)",
                        f"{figures.events_per_second:,.0f} events/s",
                        f"{insert_rate:,.0f} docs/s `insert_many`",
                        _share(figures.events_per_second, insert_rate),
                    )
                )
                if events != args.events:
                    continue
                mongo.db()[APPLICATIONS].drop()
                report, seconds, _ = backfill_archive.rebuild(mongo)
                empty = report.applications / seconds
                stale_count = backfill_archive.make_stale(mongo)
                report, seconds, _ = backfill_archive.rebuild(mongo)
                assert report.documents_changed == stale_count, report
                stale = report.applications / seconds
                progress(f"rebuild: {empty:,.0f} docs/s into empty, {stale:,.0f} docs/s stale")
                per_doc = report.events / report.applications  # events read per document
                limit = (
                    f"{find:,.0f} docs/s streamed `find` = {find / per_doc:,.0f} documents/s "
                    f"at {per_doc:.1f} events each; {insert_rate:,.0f} docs/s `insert_many`"
                )
                rows.append(
                    Row(
                        f"rebuild into an empty `applications` ({report.applications:,} "
                        f"documents from {report.events:,} events)",
                        f"{empty:,.0f} documents/s",
                        limit,
                        _share(empty, find / per_doc),
                    )
                )
                rows.append(
                    Row(
                        f"rebuild after a projection change (all {stale_count:,} stale)",
                        f"{stale:,.0f} documents/s",
                        limit,
                        _share(stale, find / per_doc),
                    )
                )
            finally:
                backfill_archive.drop(settings, mongo)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    stream = stream_scale.measure(settings, args.applications)
    progress(f"stream: {stream.records_per_second:,.0f} records/s, equal to the fold")
    rows.append(
        Row(
            f"ingestion, update-heavy stream ({args.applications:,} applications, "
            f"{stream.records:,} records, {len(stream.runs)} runs; equal to the fold)",
            f"{stream.records_per_second:,.0f} records/s",
            f"{update_many:,.0f} `UpdateOne`/s in commands of {per_command}, {in_flight} in "
            f"flight ({update_one:,.0f} with 1)",
            "(other units)",
        )
    )

    mongo = followup_emails.fill(settings, args.followups)
    try:
        host, port = settings.smtp_host, settings.smtp_port
        smtp_one = followup_emails.raw_smtp(
            mongo, host, port, settings.email_from, messages=args.followups, connections=1
        )
        rate = followup_emails.timed_run(
            mongo,
            SmtpEmailSender(host=host, port=port, sender=settings.email_from),
            max_per_second=1e9,
            concurrency=settings.email_concurrency,
            commands=commands,
            label="follow-up run",
            count=args.followups,
        )
    finally:
        mongo.client().drop_database(mongo.database)
        mongo.close()
    progress(f"follow-ups: {rate:,.0f} emails/s, raw {smtp_one:,.0f} messages/s")
    rows.append(
        Row(
            f"follow-up emails, {args.followups:,} due, one run "
            f"(EMAIL_CONCURRENCY={settings.email_concurrency})",
            f"{rate:,.0f} emails/s",
            f"{smtp_one:,.0f} messages/s over one SMTP connection to the same sink",
            _share(rate, smtp_one),
        )
    )

    fresh = freshness.measure(args.fresh_events, args.fresh_every)
    progress("freshness:\n" + fresh.summary())
    q = fresh.quantile
    rows.append(
        Row(
            f"produce → read model through `dagster dev`, sensor on, one event every "
            f"{args.fresh_every:g} s ({args.fresh_events} events)",
            f"p50 {q(fresh.latencies, 0.5):.1f} s, p95 {q(fresh.latencies, 0.95):.1f} s",
            f"a tick every 5 s, waiting up to {PipelineSettings().sensor_wait_seconds:g} s "
            "for an event; of the p50: "
            f"{q(fresh.to_run_created, 0.5):.1f} s to the run, "
            f"{q(fresh.created_to_started, 0.5):.1f} s to its start, "
            f"{q(fresh.started_to_document, 0.5):.1f} s in the run",
            "—",
        )
    )

    print()
    print(f"Measured by `{command}` in {time.perf_counter() - started:,.0f} s")
    print(f"Mongo {settings.mongo_uri} ({stream.engine})")
    print()
    print("| path | measured | raw limit of its stage | share |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(row.markdown())


if __name__ == "__main__":
    main()
