"""`enrollment-pipeline offsets …` and `dead-letters …`: the operator's actions (Contract 6),
thin commands over `lib/operations.py`."""

from __future__ import annotations

import json
from datetime import UTC

import click

from enrollment_pipeline.cli.clients import enrollment_store, kafka_client, runs_in_flight
from enrollment_pipeline.cli.output import print_table
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.settings import (
    CrmSettings,
    IngestSettings,
    KafkaSettings,
    LeadDeliverySettings,
    MongoSettings,
)


@click.group()
def offsets() -> None:
    """Committed offsets, end offsets and lag per consumer group; reset for a replay."""


@offsets.command("show")
def offsets_show() -> None:
    """Committed (Mongo, authoritative), the Kafka copy, end and lag per group and partition."""
    from enrollment_pipeline.lib.operations import offset_rows

    settings = KafkaSettings()
    store = enrollment_store()
    with kafka_client() as kafka:
        rows = offset_rows(
            kafka, store, enrollment_topic=settings.enrollment_topic, lead_topic=settings.lead_topic
        )
    print_table(
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


def _offset_targets(values: tuple[str, ...]) -> tuple[int | None, dict[int, int]]:
    """`--to-offset N` (every chosen partition) and/or `--to-offset P=N` (one partition)."""
    every: int | None = None
    per_partition: dict[int, int] = {}
    for value in values:
        partition, sep, offset = value.partition("=")
        try:
            if sep:
                per_partition[int(partition)] = int(offset)
            else:
                every = int(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is neither an offset N nor a partition's P=N", param_hint="--to-offset"
            ) from None
    if any(v < 0 for v in [*per_partition.values(), *([every] if every is not None else [])]):
        raise click.BadParameter("offsets are 0 or more", param_hint="--to-offset")
    return every, per_partition


@offsets.command("reset")
@click.option(
    "--to-offset",
    "to_offsets",
    multiple=True,
    metavar="N | P=N",
    help="Restart at offset N (every chosen partition), or partition P at N; repeatable.",
)
@click.option("--to-time", type=click.DateTime(), help="Restart at the first event at/after (UTC).")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these.")
@click.option(
    "--consumer",
    type=click.Choice(["enrollment", "leads"]),
    default="enrollment",
    show_default=True,
    help="enrollment: the three groups on the enrollment topic; leads: "
    "lead-integration-service on the lead topic.",
)
@click.option("--allow-skip", is_flag=True, help="Allow moving forward past the committed offsets.")
@click.option("--force", is_flag=True, help="Skip the check for runs in flight.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def offsets_reset(to_offsets, to_time, partitions, consumer, allow_skip, force, yes) -> None:
    """Move a consumer's groups, so its sensor replays from there.

    Replays are safe: events already stored are no-ops, leads are not published twice, and
    delivered leads are not posted again. A move forward past the committed offset would skip
    records unread: refused unless --allow-skip. Refused while one of its runs is in flight.

    Example: enrollment-pipeline offsets reset --to-offset 0=1200 --to-offset 3=977
    """
    from enrollment_pipeline.lib.operations import ResetRefusedError, plan_reset, reset_offsets

    every, per_partition = _offset_targets(to_offsets)
    if (bool(to_offsets)) == (to_time is not None):
        raise click.UsageError("give --to-offset or --to-time (one of them)")
    job = "ingest_enrollment_events" if consumer == "enrollment" else "deliver_leads"
    if not force:
        running = runs_in_flight(job)
        if running:
            raise click.ClickException(f"{job} runs in flight: {', '.join(running)}")
    settings = KafkaSettings()
    store = enrollment_store()
    topic = settings.enrollment_topic if consumer == "enrollment" else settings.lead_topic
    groups = ENROLLMENT_GROUPS if consumer == "enrollment" else (LEAD_INTEGRATION_GROUP,)
    when = to_time.replace(tzinfo=to_time.tzinfo or UTC) if to_time else None
    with kafka_client() as kafka:
        try:
            moves = plan_reset(
                kafka,
                store,
                topic,
                group=groups[0],
                to_offset=every,
                per_partition=per_partition,
                to_time=when,
                partitions=list(partitions) or None,
                allow_skip=allow_skip,
            )
        except ResetRefusedError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{', '.join(groups)} on {topic}:")
        for move in moves:
            before = "-" if move.before is None else str(move.before)
            what = (
                f"skips {move.skipped}"
                if move.skipped
                else f"replays {move.replayed}"
                if move.replayed
                else "unchanged"
            )
            click.echo(f"  partition {move.partition}: {before} -> {move.after} ({what})")
        if not yes:
            click.confirm("Apply?", abort=True)
        lease = _cli_lease(store, "offsets reset") if consumer == "enrollment" else None
        reset_offsets(kafka, store, topic, moves, groups=groups, lease=lease)
    click.echo("done; the sensor will replay from there")


def _who() -> str:
    from enrollment_pipeline.lib.mongo.lease import default_owner

    return default_owner()


def _cli_lease(store, description: str):
    """The writers' lease a command takes before it writes the read model."""
    from enrollment_pipeline.lib.mongo.lease import LeasePolicy, WriterLease

    return WriterLease(
        store.db,
        owner=f"enrollment-pipeline {description} ({_who()})",
        description=description,
        policy=LeasePolicy.from_settings(MongoSettings()),
    )


@click.group("dead-letters")
def dead_letters() -> None:
    """Rejected input: browse by reason and time, show one, re-drive after a fix."""


@dead_letters.command("list")
@click.option("--reason", help="Only this reason code.")
@click.option("--since", type=click.DateTime(), help="Last seen at or after.")
@click.option("--all", "include_all", is_flag=True, help="Include re-driven letters.")
@click.option("--limit", type=int, default=50, show_default=True)
def dead_letters_list(reason, since, include_all, limit) -> None:
    rows = enrollment_store().dead_letters.listing(
        reason=reason,
        since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
        status=None if include_all else "OPEN",
        limit=limit,
    )
    print_table(
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
    from enrollment_pipeline.lib.mongo.dead_letters import raw_bytes

    letter = enrollment_store().dead_letters.get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id!r}")
    letter["raw"] = (raw_bytes(letter) or b"").decode("utf-8", "replace")
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
    from enrollment_pipeline.lib.operations import redrive

    settings = KafkaSettings()
    store = enrollment_store()
    ids = list(letter_ids)
    if reason:
        ids += [d["_id"] for d in store.dead_letters.listing(reason=reason, limit=100_000)]
    lead_letters = [i for i in ids if i.startswith("crm:")]
    ids = [i for i in ids if not i.startswith("crm:")]
    with kafka_client() as kafka:
        if leads or lead_letters:
            if not force and runs_in_flight("deliver_leads"):
                raise click.ClickException("deliver_leads runs in flight: try again when they end")
            _redrive_leads(kafka, store, None if leads else lead_letters)
        if not ids:
            if not (leads or lead_letters):
                raise click.UsageError("name dead letters, or give --reason or --leads")
            return
        result = redrive(
            store,
            ids,
            publish_leads=lambda messages: kafka.produce_batch(settings.lead_topic, messages),
            lease=_cli_lease(store, "dead-letters redrive"),
            limits=InputLimits.from_settings(IngestSettings()),
        )
    click.echo(f"re-driven: {len(result.redriven)}; still rejected: {len(result.still_rejected)}")
    for letter_id, why in result.still_rejected.items():
        click.echo(f"  {letter_id}: {why}")


def _redrive_leads(kafka, store, letter_ids: list[str] | None) -> None:
    """Deliver parked and failed leads now: all of them, or those of the named letters'
    applications (with what waits behind them)."""
    from enrollment_pipeline.lib.clients.crm import CrmClient, CrmConfigError
    from enrollment_pipeline.lib.leads.delivery import (
        CrmUnavailableError,
        LeadDeliveryPolicy,
        deliver_range,
    )
    from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore

    deliveries = LeadDeliveryStore(store.db, store.writer)
    applications = None
    if letter_ids is not None:
        found = deliveries.of_ids(i.removeprefix("crm:") for i in letter_ids)
        applications = {d["application_id"] for d in found.values()}
    policy = LeadDeliveryPolicy.from_settings(
        LeadDeliverySettings(), limits=InputLimits.from_settings(IngestSettings())
    )
    crm = CrmClient.from_settings(CrmSettings())
    try:
        crm.check_config()
    except CrmConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        report = deliver_range(
            kafka,
            store,
            deliveries,
            crm,
            None,
            policy=policy,
            redrive=True,
            only_applications=applications,
        )
    except CrmUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"leads delivered: {report.redriven}; refused again: {report.permanently_failed}; "
        f"parked again: {report.parked} (+{report.parked_behind} behind); "
        f"still waiting: {report.waiting.get('PARKED', 0)} parked, "
        f"{report.waiting.get('FAILED', 0)} failed"
    )
