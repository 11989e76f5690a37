"""The `enrollment-pipeline` console command (Contract 6)."""

from __future__ import annotations

import shlex
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from enrollment_pipeline.settings import PipelineSettings, StackSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.process import ServiceError

console = Console(stderr=True)


def _print_table(*columns: str, rows) -> None:
    """A table that never hides text: folded in a terminal, wide when piped."""
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _stack() -> LocalStack:
    return LocalStack(StackSettings(), PipelineSettings())


class _Commands(click.Group):
    """Fails with one clear line when MongoDB is unreachable or stalled, not a traceback."""

    def invoke(self, ctx: click.Context):
        from pymongo.errors import ConnectionFailure, PyMongoError

        from enrollment_pipeline.defs.mongo.resources import (
            MongoUnavailableError,
            mongo_from_settings,
        )

        try:
            return super().invoke(ctx)
        except MongoUnavailableError as exc:
            raise click.ClickException(str(exc)) from exc
        except PyMongoError as exc:
            if not (exc.timeout or isinstance(exc, ConnectionFailure)):
                raise
            message = mongo_from_settings(PipelineSettings()).unavailable_message(exc)
            raise click.ClickException(message) from exc


@click.group(cls=_Commands)
def main() -> None:
    """Kafka enrollment events -> Dagster -> MongoDB read model, follow-ups and CRM leads."""


@main.group()
def stack() -> None:
    """The local services (Kafka, MongoDB wire server, PostgreSQL, SMTP sink, CRM test double)
    without Docker.

    Settings: STACK_STATE_DIR, STACK_CACHE_DIR, STACK_KAFKA_PORT, STACK_MONGO_PORT,
    STACK_POSTGRES_PORT, STACK_SMTP_PORT, STACK_CRM_PORT, STACK_MONGO_ENGINE
    (auto|mongod|ferretdb).
    """


@stack.command("up")
def stack_up() -> None:
    """Install (cached), start every service, wait until each answers, create the topics."""
    local = _stack()
    started = time.monotonic()

    def report(name: str, seconds: float) -> None:
        console.print(f"  [green]✓[/] {name:<9} {seconds:6.1f} s")

    console.print(f"Starting the local stack (state in {local.settings.state_dir})")
    try:
        local.up(report)
    except ServiceError as exc:
        console.print(f"[red]✗ {exc}[/]")
        sys.exit(1)
    console.print(
        f"Stack up in {time.monotonic() - started:.1f} s. "
        "Point the pipeline at it with: export $(enrollment-pipeline stack env)"
    )


@stack.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started (data is kept)."""
    stopped = _stack().down()
    console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
def stack_status() -> None:
    """What runs where, with each service's log file."""
    rows = _stack().status()
    _print_table(
        "service",
        "state",
        "pid",
        "address",
        "log",
        rows=[
            (
                row.name,
                {"running": "[green]running[/]", "hung": "[red]hung[/] (restart: stack up)"}.get(
                    row.state, f"[red]{row.state}[/]"
                ),
                str(row.pid or ""),
                row.address,
                str(row.log_file),
            )
            for row in rows
        ],
    )
    if not all(row.running for row in rows):
        sys.exit(3)


@stack.command("env")
def stack_env() -> None:
    """Print KEY=VALUE lines for the running stack: `export $(enrollment-pipeline stack env)`."""
    for key, value in _stack().env().items():
        click.echo(f"{key}={shlex.quote(value)}")


@stack.command("mail")
@click.option("--limit", type=int, default=20, show_default=True)
def stack_mail(limit: int) -> None:
    """The emails the local SMTP sink caught, newest first (files in {state}/mail/new)."""
    from email.parser import BytesHeaderParser
    from email.utils import parsedate_to_datetime

    folder = _stack().smtp.maildir / "new"
    messages = []
    for path in folder.glob("*") if folder.is_dir() else []:
        with path.open("rb") as handle:
            headers = BytesHeaderParser().parse(handle)
        try:
            sent = parsedate_to_datetime(headers.get("Date", ""))
        except (TypeError, ValueError):
            sent = None
        messages.append((sent.timestamp() if sent else 0.0, headers, path))
    messages.sort(key=lambda item: item[0], reverse=True)
    console.print(f"{len(messages)} emails in {folder}")
    _print_table(
        "date",
        "to",
        "subject",
        "file",
        rows=[
            (headers.get("Date", ""), headers.get("To", ""), headers.get("Subject", ""), path.name)
            for _, headers, path in messages[:limit]
        ],
    )


@stack.command("leads")
@click.option("--limit", type=int, default=20, show_default=True)
def stack_leads(limit: int) -> None:
    """The leads the local CRM test double took, newest first."""
    import requests

    url = _stack().crm.url
    try:
        body = requests.get(f"{url}/leads", timeout=5).json()
    except requests.RequestException as exc:
        raise click.ClickException(f"the local CRM at {url} did not answer: {exc}") from exc
    console.print(f"{body['count']} leads at {url} (test double)")
    _print_table(
        "application",
        "status",
        "occurred at",
        "lead_event_id",
        rows=[
            (
                lead["application_id"],
                lead["lead_status"],
                lead["occurred_at"],
                lead["lead_event_id"],
            )
            for lead in reversed(body["leads"][-limit:])
        ],
    )


@stack.command("install")
def stack_install() -> None:
    """Only download and build (Kafka jars, FerretDB), e.g. in a CI cache step."""
    try:
        _stack().install()
    except ServiceError as exc:
        console.print(f"[red]✗ {exc}[/]")
        sys.exit(1)


@main.command()
@click.option("--applications", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=None, help="Same seed, same events (default: new).")
@click.option(
    "--bad-fraction",
    type=float,
    default=0.01,
    show_default=True,
    help="Share of records replaced by bad input (dead-letter material).",
)
@click.option("--batch", type=int, default=5000, show_default=True, help="Records per flush.")
@click.option(
    "--archive",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a Contract-5 archive (one file per day) to this folder instead of Kafka.",
)
@click.option("--gzip", "gzipped", is_flag=True, help="With --archive: write .jsonl.gz files.")
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default="2024-01-03",
    show_default=True,
    help="With --archive: the first submission's day.",
)
def generate(
    applications: int,
    seed: int | None,
    bad_fraction: float,
    batch: int,
    archive: str | None = None,
    gzipped: bool = False,
    start=None,
) -> None:
    """Produce realistic synthetic enrollment events to ENROLLMENT_TOPIC, or to an archive."""
    from datetime import UTC, datetime, timedelta

    from rich.progress import Progress

    from enrollment_pipeline.sample_data import synthetic_events, write_archive

    if archive:
        seed = seed if seed is not None else int(time.time())
        written = write_archive(
            archive,
            applications,
            seed=seed,
            start=(start or datetime(2024, 1, 3)).replace(tzinfo=UTC),
            bad_fraction=bad_fraction,
            gzipped=gzipped,
        )
        lines = sum(written.values())
        console.print(
            f"wrote {lines} lines in {len(written)} daily files to {archive} "
            f"({applications} applications, seed {seed}); backfill them with "
            "`dagster asset materialize --select historic_enrollment_events "
            f"--partition-range {min(written)}...{max(written)} -m enrollment_pipeline.definitions`"
        )
        return

    settings, kafka, _ = _pipeline(with_store=False)
    kafka.ensure_topics(
        [settings.enrollment_topic, settings.lead_topic],
        partitions=settings.kafka_topic_partitions,
    )
    seed = seed if seed is not None else int(time.time())
    first = 1 + sum(kafka.end_offsets(settings.enrollment_topic).values())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    records = synthetic_events(
        applications,
        seed=seed,
        start=start,
        bad_fraction=bad_fraction,
        first_application_number=first,
    )
    sent = 0
    with Progress(console=console) as progress:
        task = progress.add_task(f"→ {settings.enrollment_topic}", total=None)
        chunk: list = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= batch:
                sent += kafka.produce_batch(settings.enrollment_topic, chunk)
                progress.update(task, completed=sent)
                chunk = []
        sent += kafka.produce_batch(settings.enrollment_topic, chunk)
        progress.update(task, completed=sent, total=sent)
    kafka.close()
    console.print(f"produced {sent} records for {applications} applications (seed {seed})")


@main.command()
@click.option(
    "--applications", type=int, default=300, show_default=True, help="Records produced at once."
)
@click.option("--rate", type=float, default=2.0, show_default=True, help="Then records/second.")
@click.option("--port", type=int, default=3000, show_default=True, help="Dagster UI port.")
def demo(applications: int, rate: float, port: int) -> None:
    """The whole pipeline on the local stack: events flowing, the UI, emails and leads.

    Ctrl-C (or SIGTERM) stops everything the demo started, and says so.
    """
    import signal

    import requests

    from enrollment_pipeline.demo import Demo

    local = _stack()
    demo = Demo(local, port)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Also when started in the background by a script, which leaves SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        console.print(f"Starting the local stack (state in {local.settings.state_dir})")
        try:
            demo.start_stack(
                lambda name, seconds: console.print(f"  [green]✓[/] {name:<9} {seconds:6.1f} s")
            )
        except ServiceError as exc:
            console.print(f"[red]✗ {exc}[/]")
            sys.exit(1)
        demo.start_trickle(applications, rate)
        console.print(f"Producing events: {applications} now, then {rate:g} a second")
        demo.start_dagster()
        demo.wait_for_ui()
        console.print(f"[bold]Dagster UI: http://127.0.0.1:{port}[/] (sensors run every 15 s)")
        console.print(f"  dagster dev logs: {demo.dagster_log}")
        console.print(f"  hourly_broker_followups: {demo.start_schedule()}")
        if demo.wait_for_applications():
            console.print(f"  follow-up run launched now: {demo.launch_followups()}")
        crm = local.crm.url
        console.print(
            f"  emails: enrollment-pipeline stack mail   leads: enrollment-pipeline stack leads "
            f"(or {crm}/leads)\nCtrl-C stops the demo."
        )
        while demo.dagster is not None and demo.dagster.poll() is None:
            time.sleep(1)
            if demo.trickle is not None and demo.trickle.error is not None:
                console.print(f"[red]the event trickle stopped: {demo.trickle.error}[/]")
                demo.trickle.error = None
        console.print("[red]dagster dev exited[/]")
    except KeyboardInterrupt:
        pass
    except (RuntimeError, requests.RequestException) as exc:  # DagsterApiError among them
        console.print(f"[red]✗ {exc}[/]")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = demo.stop()
        console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing"))


def _pipeline(with_store: bool = True):
    """The Kafka resource and the store, from the Contract-6 environment."""
    from enrollment_pipeline.defs.kafka.resources import KafkaResource
    from enrollment_pipeline.defs.mongo.resources import mongo_from_settings
    from enrollment_pipeline.lib.mongo.store import EnrollmentStore

    settings = PipelineSettings()
    kafka = KafkaResource(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=settings.kafka_sasl_password.get_secret_value()
        if settings.kafka_sasl_password
        else None,
        ssl_cafile=settings.kafka_ssl_cafile,
    )
    if not with_store:
        return settings, kafka, None
    mongo = mongo_from_settings(settings)
    with mongo.explained_errors():
        mongo.ensure_indexes()
    return settings, kafka, EnrollmentStore.of(mongo)


def _in_flight(job_name: str) -> list[str]:
    """Run ids of `job_name` runs not finished, from the Dagster instance ($DAGSTER_HOME)."""
    import os

    import dagster as dg

    from enrollment_pipeline.defs.offset_ranges import IN_FLIGHT

    if not os.environ.get("DAGSTER_HOME"):
        raise click.ClickException(
            "set DAGSTER_HOME to the instance the pipeline runs in, so runs in flight can be "
            "checked (or pass --force when no Dagster process runs)"
        )
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
        return [run.run_id for run in runs]


@main.group()
def offsets() -> None:
    """Committed offsets, end offsets and lag per consumer group; reset for a replay."""


@offsets.command("show")
def offsets_show() -> None:
    """Committed (Mongo, authoritative), the Kafka copy, end and lag per group and partition."""
    from enrollment_pipeline.lib.operations import offset_rows

    settings, kafka, store = _pipeline()
    rows = offset_rows(
        kafka, store, enrollment_topic=settings.enrollment_topic, lead_topic=settings.lead_topic
    )
    _print_table(
        "group",
        "topic",
        "partition",
        "committed",
        "in kafka",
        "end",
        "lag",
        rows=[
            (
                row.group,
                row.topic,
                str(row.partition),
                "-" if row.committed is None else str(row.committed),
                "-" if row.kafka_committed is None else str(row.kafka_committed),
                str(row.end),
                str(row.lag),
            )
            for row in rows
        ],
    )


@offsets.command("reset")
@click.option("--to-offset", type=int, help="Restart every chosen partition at this offset.")
@click.option("--to-time", type=click.DateTime(), help="Restart at the first event at/after.")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these.")
@click.option(
    "--consumer",
    type=click.Choice(["enrollment", "leads"]),
    default="enrollment",
    show_default=True,
    help="enrollment: the three groups on the enrollment topic; leads: "
    "lead-integration-service on the lead topic.",
)
@click.option("--force", is_flag=True, help="Skip the check for runs in flight.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def offsets_reset(to_offset, to_time, partitions, consumer, force, yes) -> None:
    """Move a consumer's groups, so its sensor replays from there.

    Replays are safe: events already stored are no-ops, leads are not published twice, and
    delivered leads are not posted again. Refused while one of its runs is in flight.
    """
    from datetime import UTC

    from enrollment_pipeline.lib.operations import reset_offsets, reset_targets
    from enrollment_pipeline.settings import ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP

    if (to_offset is None) == (to_time is None):
        raise click.UsageError("give exactly one of --to-offset and --to-time")
    job = "ingest_enrollment_events" if consumer == "enrollment" else "deliver_leads"
    if not force:
        running = _in_flight(job)
        if running:
            raise click.ClickException(f"{job} runs in flight: {', '.join(running)}")
    settings, kafka, store = _pipeline()
    topic = settings.enrollment_topic if consumer == "enrollment" else settings.lead_topic
    groups = ENROLLMENT_GROUPS if consumer == "enrollment" else (LEAD_INTEGRATION_GROUP,)
    when = to_time.replace(tzinfo=to_time.tzinfo or UTC) if to_time else None
    targets = reset_targets(
        kafka, topic, to_offset=to_offset, to_time=when, partitions=list(partitions) or None
    )
    click.echo(f"new offsets for {', '.join(groups)} on {topic}: {targets}")
    if not yes:
        click.confirm("Apply?", abort=True)
    reset_offsets(kafka, store, topic, targets, groups=groups)
    click.echo("done; the sensor will replay from there")


@main.group("dead-letters")
def dead_letters() -> None:
    """Rejected input: browse by reason and time, show one, re-drive after a fix."""


@dead_letters.command("list")
@click.option("--reason", help="Only this reason code.")
@click.option("--since", type=click.DateTime(), help="Last seen at or after.")
@click.option("--all", "include_all", is_flag=True, help="Include re-driven letters.")
@click.option("--limit", type=int, default=50, show_default=True)
def dead_letters_list(reason, since, include_all, limit) -> None:
    from datetime import UTC

    from enrollment_pipeline.lib.operations import list_dead_letters

    _, _, store = _pipeline()
    rows = list_dead_letters(
        store,
        reason=reason,
        since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
        status=None if include_all else "OPEN",
        limit=limit,
    )
    _print_table(
        "id",
        "reason",
        "status",
        "last seen",
        "detail",
        rows=[
            (
                row["_id"],
                row["reason"],
                row.get("status", ""),
                f"{row['last_seen_at']:%Y-%m-%d %H:%M:%S}",
                row.get("detail", "")[:120],
            )
            for row in rows
        ],
    )


@dead_letters.command("show")
@click.argument("letter_id")
def dead_letters_show(letter_id) -> None:
    import base64
    import json

    _, _, store = _pipeline()
    from enrollment_pipeline.defs.mongo.resources import DEAD_LETTERS

    letter = store.db[DEAD_LETTERS].find_one({"_id": letter_id})
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id!r}")
    raw = base64.b64decode(letter["raw_base64"]) if letter.get("raw_base64") else b""
    letter["raw"] = raw.decode("utf-8", "replace")
    click.echo(json.dumps(letter, indent=2, default=str))


@dead_letters.command("redrive")
@click.argument("letter_ids", nargs=-1)
@click.option("--reason", help="Re-drive every open letter with this reason.")
@click.option(
    "--leads", is_flag=True, help="Deliver every parked or CRM-refused lead again, in order."
)
@click.option("--force", is_flag=True, help="Skip the check for delivery runs in flight.")
def dead_letters_redrive(letter_ids, reason, leads, force) -> None:
    """Apply kept input again after a fix: records are parsed again and applied (their leads
    published); `crm:` letters and parked leads are posted to the CRM again, in order."""
    from enrollment_pipeline.lib.operations import list_dead_letters, redrive

    settings, kafka, store = _pipeline()
    ids = list(letter_ids)
    if reason:
        ids += [d["_id"] for d in list_dead_letters(store, reason=reason, limit=100_000)]
    lead_letters = [i for i in ids if i.startswith("crm:")]
    ids = [i for i in ids if not i.startswith("crm:")]
    if leads or lead_letters:
        if not force and _in_flight("deliver_leads"):
            raise click.ClickException("deliver_leads runs in flight: try again when they end")
        _redrive_leads(settings, kafka, store, None if leads else lead_letters)
    if not ids:
        if not (leads or lead_letters):
            raise click.UsageError("name dead letters, or give --reason or --leads")
        return
    result = redrive(
        store,
        ids,
        publish_leads=lambda messages: kafka.produce_batch(settings.lead_topic, messages),
        max_record_bytes=settings.ingest_max_record_bytes,
    )
    click.echo(f"re-driven: {len(result.redriven)}; still rejected: {len(result.still_rejected)}")
    for letter_id, why in result.still_rejected.items():
        click.echo(f"  {letter_id}: {why}")


def _redrive_leads(settings, kafka, store, letter_ids: list[str] | None) -> None:
    """Deliver parked and failed leads now: all of them, or those of the named letters'
    applications (with what waits behind them)."""
    from enrollment_pipeline.defs.crm.resources import CrmClient, CrmConfigError
    from enrollment_pipeline.lib.leads.delivery import CrmUnavailableError, deliver_range
    from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore

    applications = None
    if letter_ids is not None:
        deliveries = LeadDeliveryStore(store.db, store.writer)
        found = deliveries.of_ids(i.removeprefix("crm:") for i in letter_ids)
        applications = {d["application_id"] for d in found.values()}
    crm = CrmClient(
        base_url=settings.lead_api_url,
        token=settings.lead_api_token.get_secret_value() if settings.lead_api_token else None,
        allow_http=settings.lead_api_allow_http,
        connect_timeout_s=settings.lead_api_connect_timeout_seconds,
        read_timeout_s=settings.lead_api_read_timeout_seconds,
        request_deadline_s=settings.lead_api_request_deadline_seconds,
        max_attempts=settings.lead_api_max_attempts,
    )
    try:
        crm.check_config()
    except CrmConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        report = deliver_range(
            kafka,
            store,
            LeadDeliveryStore(store.db, store.writer),
            crm,
            None,
            redrive=True,
            only_applications=applications,
            budget_s=settings.lead_run_budget_seconds,
            concurrency=settings.lead_concurrency,
        )
    except CrmUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"leads delivered: {report.redriven}; refused again: {report.permanently_failed}; "
        f"parked again: {report.parked} (+{report.parked_behind} behind); "
        f"still waiting: {report.waiting.get('PARKED', 0)} parked, "
        f"{report.waiting.get('FAILED', 0)} failed"
    )


if __name__ == "__main__":
    main()
