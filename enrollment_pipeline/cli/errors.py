"""Errors a person can act on: the project's own errors become one line each on stderr
(`Error: …`, naming the setting to check) and exit code 1, never a traceback.

`--debug` (or ENROLLMENT_PIPELINE_DEBUG=1) lets the error through with its traceback. An
error that is not one of ours (a bug) always shows its traceback.
"""

from __future__ import annotations

import os
import sys

import click

DEBUG_VARIABLE = "ENROLLMENT_PIPELINE_DEBUG"


def debug_wanted(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_VARIABLE, "").lower() in (
        "1",
        "true",
        "yes",
    )


class Commands(click.Group):
    """The main group: turns the project's errors into lines (see `explain`)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if isinstance(exc, BrokenPipeError):  # `… | head` stopped reading: nothing to say
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stays open for the exit)
                ctx.exit(1)
            lines = explain(exc)
            if lines is None or debug_wanted(ctx):
                raise
            for line in lines:
                click.echo(f"Error: {line}", err=True)
            ctx.exit(1)


def _instance(exc: BaseException, module: str, name: str) -> bool:
    """isinstance against a class of a module already imported (else it cannot be one)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def explain(exc: BaseException) -> list[str] | None:
    """The lines for one of the project's errors; None for anything else."""
    from pydantic import ValidationError

    from enrollment_pipeline.lib.clients.mongo import redacted_uri
    from enrollment_pipeline.lib.settings_errors import SettingsError, describe, group_of

    if isinstance(exc, SettingsError):
        return exc.lines
    if isinstance(exc, ValidationError):
        group = group_of(exc)
        return describe(exc, group) if group is not None else None
    ours = [
        ("enrollment_pipeline.lib.clients.kafka", "KafkaUnavailableError"),
        ("enrollment_pipeline.lib.clients.kafka", "OffsetOutOfRangeError"),
        ("enrollment_pipeline.lib.clients.mongo", "MongoUnavailableError"),
        ("enrollment_pipeline.lib.clients.crm", "CrmConfigError"),
        ("enrollment_pipeline.lib.leads.delivery", "CrmUnavailableError"),
        ("enrollment_pipeline.lib.clients.archive", "ArchiveTailError"),
        ("enrollment_pipeline.lib.clients.archive", "ArchiveMissingError"),
        ("enrollment_pipeline.lib.clients.dagster_api", "DagsterApiError"),
        ("enrollment_pipeline.lib.mongo.lease", "LeaseHeldError"),
        ("enrollment_pipeline.lib.mongo.lease", "LeaseLostError"),
        ("enrollment_pipeline.lib.erasure", "NothingToEraseError"),
        ("enrollment_pipeline.stack.process", "ServiceError"),
    ]
    if any(_instance(exc, module, name) for module, name in ours):
        return [_one_line(str(exc))]
    if _instance(exc, "kafka.errors", "KafkaError"):
        return [
            f"Kafka failed ({_named(exc)}); check KAFKA_BOOTSTRAP_SERVERS, "
            "KAFKA_SECURITY_PROTOCOL and the SASL settings"
        ]
    if _instance(exc, "pymongo.errors", "PyMongoError"):
        return [_mongo(exc)]
    if _instance(exc, "botocore.exceptions", "ClientError") or _instance(
        exc, "botocore.exceptions", "BotoCoreError"
    ):
        return [
            f"AWS answered {_named(exc)}; check ARCHIVE_ROOT (s3://bucket/prefix), AWS_REGION, "
            "AWS_ENDPOINT_URL and the AWS credentials"
        ]
    if _instance(exc, "dagster._core.errors", "DagsterError"):
        home = os.environ.get("DAGSTER_HOME", "")
        return [f"the Dagster instance (DAGSTER_HOME={home!r}): {_one_line(str(exc))}"]
    if isinstance(exc, OSError):  # a file or a socket: its message names it
        return [_one_line(redacted_text(str(exc), redacted_uri))]
    return None


def _mongo(exc: BaseException) -> str:
    from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

    from enrollment_pipeline.lib.clients.mongo import MongoConnection, redacted_uri
    from enrollment_pipeline.lib.settings_errors import SettingsError, load
    from enrollment_pipeline.settings import MongoSettings

    assert isinstance(exc, PyMongoError)
    try:
        settings = load(MongoSettings)
    except SettingsError:
        settings = None
    if settings is not None and (exc.timeout or isinstance(exc, ConnectionFailure)):
        return MongoConnection.from_settings(settings).unavailable_message(exc)
    where = f" at {redacted_uri(settings.mongo_uri)}" if settings else ""
    if isinstance(exc, OperationFailure) and exc.code == 18:
        return f"MongoDB{where} refused the login; check the credentials in MONGO_URI"
    text = redacted_text(_named(exc), redacted_uri)
    return f"MongoDB{where} failed ({text}); check MONGO_URI and MONGO_DATABASE"


def redacted_text(text: str, redact) -> str:
    """Any URI in `text` without its credentials."""
    import re

    return re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: redact(m.group(0)), text)


def _named(exc: BaseException) -> str:
    """`Type: message` once (kafka-python's messages already start with their type)."""
    text = _one_line(str(exc))
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _one_line(text: str) -> str:
    return " ".join(text.split())
