"""The `enrollment-pipeline` console command (Contract 6): stack and demo, generate, operate.

Commands are thin: they build the clients they need from their settings groups and call
`lib/operations.py` (or the stack); this module turns the project's errors into one line.
"""

from __future__ import annotations

import click

from enrollment_pipeline.cli.generate import generate
from enrollment_pipeline.cli.operate import dead_letters, offsets
from enrollment_pipeline.cli.stack import demo, stack


class _Commands(click.Group):
    """Fails with one clear line when MongoDB is unreachable or stalled, not a traceback."""

    def invoke(self, ctx: click.Context):
        from pymongo.errors import ConnectionFailure, PyMongoError

        from enrollment_pipeline.lib.clients.mongo import MongoConnection, MongoUnavailableError
        from enrollment_pipeline.settings import MongoSettings

        try:
            return super().invoke(ctx)
        except MongoUnavailableError as exc:
            raise click.ClickException(str(exc)) from exc
        except PyMongoError as exc:
            if not (exc.timeout or isinstance(exc, ConnectionFailure)):
                raise
            message = MongoConnection.from_settings(MongoSettings()).unavailable_message(exc)
            raise click.ClickException(message) from exc


@click.group(cls=_Commands)
def main() -> None:
    """Kafka enrollment events -> Dagster -> MongoDB read model, follow-ups and CRM leads."""


for command in (stack, demo, generate, offsets, dead_letters):
    main.add_command(command)
