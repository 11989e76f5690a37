"""`enrollment-pipeline backfill`: queue a backfill of archive days as Dagster runs, sharded by
partition so that live ingestion of the other partitions goes on beside it."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from enrollment_pipeline.cli.clients import kafka_client
from enrollment_pipeline.cli.output import print_json
from enrollment_pipeline.domain.backfill_plan import BackfillRun, plan_backfill_runs
from enrollment_pipeline.lib.settings_errors import check
from enrollment_pipeline.settings import ArchiveSettings, IngestSettings, KafkaSettings

JOB = "backfill_enrollment_history"
ASSET_OP = "historic_enrollment_events"
DAY = click.DateTime(["%Y-%m-%d"])


def _queueing_options(command):
    """The options of a command that queues runs through the webserver."""
    for option in reversed(
        [
            click.option(
                "--url",
                envvar="DAGSTER_URL",
                default="http://127.0.0.1:3000",
                show_default=True,
                help="The Dagster webserver (or DAGSTER_URL).",
            ),
            click.option("--dry-run", is_flag=True, help="Print the runs; queue nothing."),
            click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts."),
        ]
    ):
        command = option(command)
    return command


@click.command()
@click.option("--from", "first", type=DAY, required=True, help="First day (UTC), YYYY-MM-DD.")
@click.option("--to", "last", type=DAY, required=True, help="Last day, included.")
@click.option(
    "--shards/--one-run",
    default=True,
    show_default=True,
    help="One run per partition of the enrollment topic (each under that partition's lease), "
    "or one run over every application (every partition's lease: live ingestion waits).",
)
@click.option(
    "--days-per-run",
    type=click.IntRange(1, 3660),
    default=31,
    show_default=True,
    help="Days one run covers: live events of a backfilled partition wait at most one run.",
)
@click.option("--publish-leads", is_flag=True, help="Publish the leads of archived events.")
@_queueing_options
def backfill(first, last, shards, days_per_run, publish_leads, url, dry_run, as_json) -> None:
    """Queue the runs of a backfill of archive days (Contract 5).

    The runs wait in Dagster's queue: shards carry their partition's lane and a lower priority
    than live ingestion, so at most INGEST_PARALLEL_RUNS runs write at once and live events of
    a lane go first when it frees. Backfilling a day twice changes nothing.

    Example: enrollment-pipeline backfill --from 2024-01-01 --to 2024-12-31
    """
    from enrollment_pipeline.defs.offset_ranges import BACKFILL_PRIORITY, LANE_TAG, PRIORITY_TAG
    from enrollment_pipeline.lib.clients.dagster_api import DagsterApi, DagsterApiError

    check(KafkaSettings, IngestSettings, ArchiveSettings)
    start = ArchiveSettings().archive_start_date
    first_day, last_day = first.date(), last.date()
    today = datetime.now(UTC).date()
    if first_day < start:
        raise click.BadParameter(
            f"{first_day} is before ARCHIVE_START_DATE ({start})", param_hint="--from"
        )
    if last_day >= today:
        raise click.BadParameter(
            f"{last_day} is not a finished day (today is {today} UTC)", param_hint="--to"
        )
    partitions = None
    if shards:
        with kafka_client() as kafka:
            partitions = len(kafka.partitions(KafkaSettings().enrollment_topic))
    try:
        runs = plan_backfill_runs(
            first_day,
            last_day,
            days_per_run=days_per_run,
            shards=partitions,
            lanes=IngestSettings().ingest_parallel_runs,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    api = None if dry_run else _api(url, DagsterApi, DagsterApiError)
    queued: list[dict[str, object]] = []
    for run in runs:
        tags = {
            "dagster/asset_partition_range_start": run.first.isoformat(),
            "dagster/asset_partition_range_end": run.last.isoformat(),
        }
        if run.lane is not None:
            tags |= {LANE_TAG: str(run.lane), PRIORITY_TAG: BACKFILL_PRIORITY}
        config = {
            "ops": {ASSET_OP: {"config": {"publish_leads": publish_leads, "shard": run.shard}}}
        }
        run_id = None
        if api is not None:
            try:
                run_id = api.launch_run(JOB, config, tags=tags)
            except DagsterApiError as exc:
                raise click.ClickException(
                    f"queued {len(queued)} of {len(runs)} runs, then the webserver refused: "
                    f"{exc}. Queueing again is safe (a day backfilled twice changes nothing)"
                ) from None
        queued.append({**_row(run), "run_id": run_id})
        if not as_json:
            click.echo(
                f"{'would queue' if dry_run else 'queued'} {run.first}..{run.last} "
                f"shard {'all' if run.shard is None else run.shard}"
                + (f" (lane {run.lane})" if run.lane is not None else "")
                + (f": run {run_id}" if run_id else "")
            )
    if as_json:
        print_json({"runs": queued, "dry_run": dry_run})


def _api(url: str, api_class, error_class):
    try:
        api = api_class.from_url(url)
    except error_class as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    if not api.is_up():
        raise click.ClickException(
            f"no Dagster webserver answers at {url}; start `dagster dev` (or the deployment's "
            "webserver) or pass --url / DAGSTER_URL"
        )
    return api


def _row(run: BackfillRun) -> dict[str, object]:
    return {
        "first": run.first.isoformat(),
        "last": run.last.isoformat(),
        "shard": run.shard,
        "lane": run.lane,
    }


@click.command()
@click.option(
    "--shards/--one-run",
    default=True,
    show_default=True,
    help="One run per partition, each refolding its applications in place under that "
    "partition's lease (live ingestion of the others goes on), or one run over every "
    "application (a fresh collection swapped in; every partition's lease: ingestion waits).",
)
@_queueing_options
def rebuild(shards, url, dry_run, as_json) -> None:
    """Queue a rebuild of the read model from the event store.

    Shards wait in Dagster's queue and run one after another (the pool
    `enrollment_read_model`), each holding one partition, so a shard and the live ingestion of
    its partition take turns and the other partitions are never held. Rebuilding twice
    changes nothing.

    Example: enrollment-pipeline rebuild --shards
    """
    from enrollment_pipeline.defs.offset_ranges import BACKFILL_PRIORITY, LANE_TAG, PRIORITY_TAG
    from enrollment_pipeline.lib.clients.dagster_api import DagsterApi, DagsterApiError

    check(KafkaSettings, IngestSettings)
    shard_ids: list[int | None] = [None]
    if shards:
        with kafka_client() as kafka:
            shard_ids = list(range(len(kafka.partitions(KafkaSettings().enrollment_topic))))
    lanes = IngestSettings().ingest_parallel_runs
    api = None if dry_run else _api(url, DagsterApi, DagsterApiError)
    queued: list[dict[str, object]] = []
    for shard in shard_ids:
        tags = {PRIORITY_TAG: BACKFILL_PRIORITY}
        if shard is not None:
            tags[LANE_TAG] = str(shard % lanes)
        config = {"ops": {"refold_every_application": {"config": {"shard": shard}}}}
        run_id = None
        if api is not None:
            try:
                run_id = api.launch_run("rebuild_read_model", config, tags=tags)
            except DagsterApiError as exc:
                raise click.ClickException(
                    f"queued {len(queued)} of {len(shard_ids)} runs, then the webserver "
                    f"refused: {exc}. Queueing again is safe (a rebuild twice changes nothing)"
                ) from None
        queued.append({"shard": shard, "lane": tags.get(LANE_TAG), "run_id": run_id})
        if not as_json:
            click.echo(
                f"{'would queue' if dry_run else 'queued'} rebuild shard "
                f"{'all' if shard is None else shard}" + (f": run {run_id}" if run_id else "")
            )
    if as_json:
        print_json({"runs": queued, "dry_run": dry_run})
