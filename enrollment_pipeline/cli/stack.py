"""`enrollment-pipeline stack …` and `demo`: the local services, and the pipeline on them."""

from __future__ import annotations

import shlex
import sys
import time

import click

from enrollment_pipeline.cli.output import console, print_json, print_table, report_started
from enrollment_pipeline.lib.settings_errors import check, load_only
from enrollment_pipeline.settings import KafkaSettings, StackSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.process import ServiceError

JSON = click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")


def _stack(*, secure: bool = False) -> LocalStack:
    """The stack's settings (`secure` forces STACK_SECURE on), and of Kafka's the topics and
    partitions: nothing else can stop a `stack` command."""
    stack_settings, kafka = load_only(
        (StackSettings, tuple(StackSettings.model_fields)),
        (KafkaSettings, ("enrollment_topic", "lead_topic", "kafka_topic_partitions")),
    )
    assert isinstance(stack_settings, StackSettings) and isinstance(kafka, KafkaSettings)
    if secure:
        stack_settings = stack_settings.model_copy(update={"secure": True})
    try:
        return LocalStack(stack_settings, kafka)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def stack() -> None:
    """The local services (Kafka, MongoDB wire server, PostgreSQL, SMTP sink, CRM test double)
    without Docker.

    Settings: STACK_STATE_DIR, STACK_CACHE_DIR, STACK_HOST (loopback unless
    STACK_ALLOW_REMOTE=true), STACK_KAFKA_PORT, STACK_MONGO_PORT, STACK_POSTGRES_PORT,
    STACK_SMTP_PORT, STACK_CRM_PORT, STACK_MONGO_ENGINE (auto|mongod|ferretdb); STACK_SECURE
    with STACK_KAFKA_SASL_PORT and STACK_MONGO_SECURE_PORT.

    \b
    Example:
      enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    """


@stack.command("up")
@click.option(
    "--secure",
    is_flag=True,
    help="Also the secured pieces (as STACK_SECURE=true): Kafka's SASL_SSL listener and a "
    "MongoDB-wire server that requires its user.",
)
def stack_up(secure: bool) -> None:
    """Install (cached), start every service, wait until each answers, create the topics.

    Services already running are kept. Example: `STACK_KAFKA_PORT=19092 enrollment-pipeline
    stack up`.
    """
    local = _stack(secure=secure)
    started = time.monotonic()
    console.print(f"Starting the local stack (state in {local.settings.state_dir})")
    try:
        local.up(report_started)
    except ServiceError as exc:
        console.print(f"[red]✗ {exc}[/]")
        sys.exit(1)
    console.print(
        f"Stack up in {time.monotonic() - started:.1f} s. "
        "Point the pipeline at it with: export $(enrollment-pipeline stack env)"
    )


@stack.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started (data is kept).

    Example: `enrollment-pipeline stack down`.
    """
    stopped = _stack().down()
    console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@JSON
def stack_status(as_json: bool) -> None:
    """What runs where, with each service's log file; exit code 3 when one is not running.

    Example: `enrollment-pipeline stack status --json`.
    """
    rows = _stack().status()
    if as_json:
        print_json(
            {
                "services": [
                    {
                        "service": row.name,
                        "state": row.state,
                        "pid": row.pid,
                        "address": row.address,
                        "log": str(row.log_file),
                    }
                    for row in rows
                ]
            }
        )
        if not all(row.running for row in rows):
            sys.exit(3)
        return
    print_table(
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
@click.option(
    "--secure",
    is_flag=True,
    help="Point at the secured pieces: SASL_SSL with its SCRAM user and CA, and MONGO_URI "
    "with credentials (after `stack up --secure`).",
)
def stack_env(secure: bool) -> None:
    """Print KEY=VALUE lines for the running stack: `export $(enrollment-pipeline stack env)`.

    Paths are absolute (ARCHIVE_ROOT, DAGSTER_HOME: the demo's instance, so `status` and
    `offsets reset` see its runs). Values you set yourself (topics, MONGO_DATABASE,
    ARCHIVE_ROOT, follow-up limits) are repeated as set.
    """
    local = _stack()
    try:
        values = local.secure_env() if secure else local.env()
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in values.items():
        click.echo(f"{key}={shlex.quote(value)}")


@stack.command("mail")
@click.option("--limit", type=int, default=20, show_default=True)
@JSON
def stack_mail(limit: int, as_json: bool) -> None:
    """The emails the local SMTP sink caught, newest first (files in {state}/mail/new).

    Example: `enrollment-pipeline stack mail --limit 5`.
    """
    smtp = _stack().smtp
    messages = smtp.messages()
    if as_json:
        print_json(
            {
                "count": len(messages),
                "maildir": str(smtp.maildir / "new"),
                "emails": [
                    {"date": m.sent, "to": m.to, "subject": m.subject, "file": str(m.path)}
                    for m in messages[:limit]
                ],
            }
        )
        return
    shown = min(limit, len(messages))
    console.print(f"{len(messages)} emails in {smtp.maildir / 'new'} (newest {shown} shown)")
    print_table(
        "date",
        "to",
        "subject",
        "file",
        rows=[(m.date, m.to, m.subject, m.path.name) for m in messages[:limit]],
    )


@stack.command("leads")
@click.option("--limit", type=int, default=20, show_default=True)
@JSON
def stack_leads(limit: int, as_json: bool) -> None:
    """The leads the local CRM test double took, newest first (no contact values shown).

    Example: `enrollment-pipeline stack leads --json`.
    """
    import requests

    crm = _stack().crm
    try:
        body = crm.leads()
    except requests.RequestException as exc:
        raise click.ClickException(f"the local CRM at {crm.url} did not answer: {exc}") from exc
    newest = list(reversed(body["leads"][-limit:]))
    if as_json:
        fields = ("application_id", "lead_status", "occurred_at", "lead_event_id", "product")
        print_json(
            {
                "count": body["count"],
                "crm": crm.url,
                "leads": [{k: lead.get(k) for k in fields} for lead in newest],
            }
        )
        return
    console.print(f"{body['count']} leads at {crm.url} (test double; newest {len(newest)} shown)")
    print_table(
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
            for lead in newest
        ],
    )


@stack.command("install")
def stack_install() -> None:
    """Only download and build (Kafka jars, FerretDB), e.g. in a CI cache step.

    Example: `enrollment-pipeline stack install`.
    """
    try:
        _stack().install()
    except ServiceError as exc:
        console.print(f"[red]✗ {exc}[/]")
        sys.exit(1)


@click.command()
@click.option(
    "--applications", type=int, default=300, show_default=True, help="Records produced at once."
)
@click.option("--rate", type=float, default=2.0, show_default=True, help="Then records/second.")
@click.option("--port", type=int, default=3000, show_default=True, help="Dagster UI port.")
def demo(applications: int, rate: float, port: int) -> None:
    """The whole pipeline on the local stack: events flowing, the UI, emails and leads.

    Ctrl-C (or SIGTERM) stops everything the demo started, and says so. Example:
    `enrollment-pipeline demo --applications 1000 --rate 5`.
    """
    import signal

    import requests

    from enrollment_pipeline.settings import PipelineSettings
    from enrollment_pipeline.stack.demo import Demo

    check(PipelineSettings)  # what its code location will read: every bad variable, now
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
            demo.start_stack(report_started)
        except ServiceError as exc:
            console.print(f"[red]✗ {exc}[/]")
            sys.exit(1)
        demo.start_trickle(applications, rate)
        console.print(f"Producing events: {applications} now, then {rate:g} a second")
        demo.start_dagster()
        demo.wait_for_ui()
        console.print(
            f"[bold]Dagster UI: http://127.0.0.1:{port}[/] "
            f"(sensors tick every 5 s; a tick with nothing to do waits "
            f"{PipelineSettings().sensor_wait_seconds:g} s for an event)"
        )
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
