"""The clients a command needs, each built from its own group of settings (the same
constructors the Dagster resources use), so a command reads only the variables it needs."""

from __future__ import annotations

import os

import click

from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import KafkaSettings, MongoSettings


def kafka_client() -> KafkaClient:
    return KafkaClient.from_settings(KafkaSettings())


def enrollment_store() -> EnrollmentStore:
    """The store over MONGO_URI / MONGO_DATABASE, its indexes made sure of."""
    mongo = MongoConnection.from_settings(MongoSettings())
    mongo.ensure_indexes()
    return EnrollmentStore.of(mongo)


def runs_in_flight(job_name: str) -> list[str]:
    """Run ids of `job_name` runs not finished, from the Dagster instance ($DAGSTER_HOME)."""
    import dagster as dg

    from enrollment_pipeline.lib.dagster_runs import runs_in_flight as in_flight

    if not os.environ.get("DAGSTER_HOME"):
        raise click.ClickException(
            "set DAGSTER_HOME to the instance the pipeline runs in, so runs in flight can be "
            "checked (or pass --force when no Dagster process runs)"
        )
    with dg.DagsterInstance.get() as instance:
        return in_flight(instance, job_name)
