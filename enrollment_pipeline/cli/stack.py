"""`enrollment-pipeline stack …` and `demo`: the local services, and the pipeline on them."""

from __future__ import annotations

import shlex
import sys
import time

import click

from enrollment_pipeline.cli.output import console, print_table, report_started
from enrollment_pipeline.settings import PipelineSettings, StackSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.process import ServiceError


def _stack(*, secure: bool = False) -> LocalStack:
    """The stack of the environment's STACK_* settings (`secure` forces STACK_SECURE on)."""
    try:
        settings = StackSettings(**({"secure": True} if secure else {}))
        return LocalStack(settings, PipelineSettings())
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
    """


@stack.command("up")
@click.option(
    "--secure",
    is_flag=True,
    help="Also the secured pieces (as STACK_SECURE=true): Kafka's SASL_SSL listener and a "
    "MongoDB-wire server that requires its user.",
)
def stack_up(secure: bool) -> None:
    """Install (cached), start every service, wait until each answers, create the topics."""
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
    """Stop exactly the processes `stack up` started (data is kept)."""
    stopped = _stack().down()
    console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
def stack_status() -> None:
    """What runs where, with each service's log file."""
    rows = _stack().status()
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
    """Print KEY=VALUE lines for the running stack: `export $(enrollment-pipeline stack env)`."""
    local = _stack()
    try:
        values = local.secure_env() if secure else local.env()
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in values.items():
        click.echo(f"{key}={shlex.quote(value)}")


@stack.command("mail")
@click.option("--limit", type=int, default=20, show_default=True)
def stack_mail(limit: int) -> None:
    """The emails the local SMTP sink caught, newest first (files in {state}/mail/new)."""
    smtp = _stack().smtp
    messages = smtp.messages()
    console.print(f"{len(messages)} emails in {smtp.maildir / 'new'}")
    print_table(
        "date",
        "to",
        "subject",
        "file",
        rows=[(m.date, m.to, m.subject, m.path.name) for m in messages[:limit]],
    )


@stack.command("leads")
@click.option("--limit", type=int, default=20, show_default=True)
def stack_leads(limit: int) -> None:
    """The leads the local CRM test double took, newest first."""
    import requests

    crm = _stack().crm
    try:
        body = crm.leads()
    except requests.RequestException as exc:
        raise click.ClickException(f"the local CRM at {crm.url} did not answer: {exc}") from exc
    console.print(f"{body['count']} leads at {crm.url} (test double)")
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


@click.command()
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

    from enrollment_pipeline.stack.demo import Demo

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
