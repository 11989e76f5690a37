"""The `enrollment-pipeline` console command (Contract 6): stack and demo, generate, operate,
status and explain, erase.

Commands are thin: they build the clients they need from their settings groups and call
`lib/` (or the stack); `cli/errors.py` turns the project's errors into one line each.
"""

from __future__ import annotations

import click

from enrollment_pipeline.cli.backfill import backfill, rebuild
from enrollment_pipeline.cli.errors import DEBUG_VARIABLE, Commands
from enrollment_pipeline.cli.generate import generate
from enrollment_pipeline.cli.inspect import explain, status
from enrollment_pipeline.cli.operate import dead_letters, offsets
from enrollment_pipeline.cli.privacy import erase
from enrollment_pipeline.cli.stack import demo, stack


@click.group(cls=Commands)
@click.version_option(package_name="enrollment-pipeline", message="%(prog)s %(version)s")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the traceback of an error instead of one line (or set {DEBUG_VARIABLE}=1).",
)
def main(debug: bool) -> None:
    """Kafka enrollment events -> Dagster -> MongoDB read model, follow-ups and CRM leads.

    Every setting is an environment variable (README, "Pointing it at your systems"); each
    command reads only the groups it needs. Times are UTC.

    \b
    Examples:
      export $(enrollment-pipeline stack env)
      enrollment-pipeline status
      enrollment-pipeline explain APP-000123
    """


for command in (
    status,
    explain,
    stack,
    demo,
    generate,
    backfill,
    rebuild,
    offsets,
    dead_letters,
    erase,
):
    main.add_command(command)
