"""`enrollment-pipeline generate`: realistic synthetic events, to Kafka or to an archive."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import click

from enrollment_pipeline.cli.clients import kafka_client
from enrollment_pipeline.cli.output import console
from enrollment_pipeline.settings import KafkaSettings


@click.command()
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
    """Produce realistic synthetic enrollment events to ENROLLMENT_TOPIC, or to an archive.

    Examples: `enrollment-pipeline generate --applications 5000` (to Kafka, ~1% bad input);
    `enrollment-pipeline generate --archive ./archive --applications 2000 --gzip`.
    """
    from rich.progress import Progress

    from enrollment_pipeline.lib.operations import produce_records
    from enrollment_pipeline.lib.sample_data import synthetic_events, write_archive

    seed = seed if seed is not None else int(time.time())
    if archive:
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

    settings = KafkaSettings()
    with kafka_client() as kafka:
        kafka.ensure_topics(
            [settings.enrollment_topic, settings.lead_topic],
            partitions=settings.kafka_topic_partitions,
        )
        first = 1 + sum(kafka.end_offsets(settings.enrollment_topic).values())
        records = synthetic_events(
            applications,
            seed=seed,
            start=datetime.now(UTC).replace(microsecond=0) - timedelta(days=2),
            bad_fraction=bad_fraction,
            first_application_number=first,
        )
        with Progress(console=console) as progress:
            task = progress.add_task(f"→ {settings.enrollment_topic}", total=None)
            sent = produce_records(
                kafka,
                settings.enrollment_topic,
                records,
                batch=batch,
                progress=lambda count: progress.update(task, completed=count),
            )
            progress.update(task, completed=sent, total=sent)
    console.print(f"produced {sent} records for {applications} applications (seed {seed})")
