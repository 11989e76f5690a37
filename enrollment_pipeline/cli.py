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


def _stack() -> LocalStack:
    return LocalStack(StackSettings(), PipelineSettings())


@click.group()
def main() -> None:
    """Kafka enrollment events -> Dagster -> MongoDB read model, follow-ups and CRM leads."""


@main.group()
def stack() -> None:
    """The local services (Kafka, MongoDB wire server, PostgreSQL, SMTP) without Docker.

    Settings: STACK_STATE_DIR, STACK_CACHE_DIR, STACK_KAFKA_PORT, STACK_MONGO_PORT,
    STACK_POSTGRES_PORT, STACK_SMTP_PORT, STACK_MONGO_ENGINE (auto|mongod|ferretdb).
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
        'Point the pipeline at it with: eval "$(enrollment-pipeline stack env)"'
    )


@stack.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started (data is kept)."""
    stopped = _stack().down()
    console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
def stack_status() -> None:
    """What runs where, with each service's log file."""
    table = Table("service", "state", "pid", "address", "log")
    rows = _stack().status()
    for row in rows:
        table.add_row(
            row.name,
            "[green]running[/]" if row.running else "[red]stopped[/]",
            str(row.pid or ""),
            row.address,
            str(row.log_file),
        )
    Console().print(table)
    if not all(row.running for row in rows):
        sys.exit(3)


@stack.command("env")
def stack_env() -> None:
    """Print KEY=VALUE lines for the running stack, ready for eval/export."""
    for key, value in _stack().env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@stack.command("install")
def stack_install() -> None:
    """Only download and build (Kafka jars, FerretDB), e.g. in a CI cache step."""
    try:
        _stack().install()
    except ServiceError as exc:
        console.print(f"[red]✗ {exc}[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
