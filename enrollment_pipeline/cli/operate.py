"""`enrollment-pipeline offsets …` and `dead-letters …`: the operator's actions (Contract 6),
thin commands over `lib/operations.py`."""

from __future__ import annotations

from datetime import UTC

import click

from enrollment_pipeline.cli.clients import enrollment_store, kafka_client, runs_in_flight
from enrollment_pipeline.cli.output import console, print_json, print_table, utc
from enrollment_pipeline.domain.events import RejectReason
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.lib.settings_errors import check
from enrollment_pipeline.settings import (
    CrmSettings,
    IngestSettings,
    KafkaSettings,
    LeadDeliverySettings,
    MongoSettings,
)

JSON = click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
REASONS = click.Choice([str(reason) for reason in RejectReason])
GROUPS = click.Choice([*ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP])


@click.group()
def offsets() -> None:
    """Committed offsets, end offsets and lag per consumer group; reset for a replay.

    Example: `enrollment-pipeline offsets show --group read-model-service`.
    """


@offsets.command("show")
@click.option("--group", "groups", type=GROUPS, multiple=True, help="Only this group (repeatable).")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
@JSON
def offsets_show(groups, topics, as_json) -> None:
    """Committed (Mongo, authoritative), the Kafka copy, end and lag per group and partition,
    with each group's total.

    `-` means nothing committed yet. Example: `enrollment-pipeline offsets show --group
    read-model-service --json`.
    """
    from enrollment_pipeline.lib.operations import offset_rows
    from enrollment_pipeline.lib.status import lag_by_group

    check(KafkaSettings, MongoSettings)
    settings = KafkaSettings()
    store = enrollment_store()
    with kafka_client() as kafka:
        rows = offset_rows(
            kafka, store, enrollment_topic=settings.enrollment_topic, lead_topic=settings.lead_topic
        )
    rows = [
        r for r in rows if (not groups or r.group in groups) and (not topics or r.topic in topics)
    ]
    by_group = lag_by_group(rows)
    if as_json:
        print_json({"groups": [g.to_json() for g in by_group], "lag": sum(g.lag for g in by_group)})
        return
    table: list = []
    for group in by_group:
        if table:
            table.append(None)
        table += [
            (
                row.group,
                row.topic,
                str(row.partition),
                "-" if row.committed is None else f"{row.committed:,}",
                "-" if row.kafka_committed is None else f"{row.kafka_committed:,}",
                f"{row.end:,}",
                f"{row.lag:,}",
            )
            for row in group.rows
        ]
        table.append(
            (group.group, group.topic, "total", "", "", f"{group.end:,}", f"{group.lag:,}")
        )
    print_table(
        "group",
        "topic",
        "partition",
        "committed",
        "in kafka",
        "end",
        "lag",
        rows=table,
        right=("partition", "committed", "in kafka", "end", "lag"),
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


@offsets.command("accept-partitions")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def offsets_accept_partitions(yes) -> None:
    """Adopt the enrollment topic's partition count after partitions were added to it.

    Writers lease the read model per partition, by the count recorded when ingestion first
    ran; after a change ingestion refuses until this runs. It waits for every writer (it takes
    every old and new partition's lease), then records the new count: from then on an
    application's new events may sit on another partition than its old ones, which the fold
    does not mind (it orders by event time, not offset).

    Example: enrollment-pipeline offsets accept-partitions
    """
    from enrollment_pipeline.lib.mongo.layout import accept_layout, recorded_layout

    check(KafkaSettings, MongoSettings)
    settings = KafkaSettings()
    store = enrollment_store()
    with kafka_client() as kafka:
        ends = kafka.end_offsets(settings.enrollment_topic)
    count = len(ends)
    recorded = recorded_layout(store.db)
    if recorded is not None and recorded.partitions == count:
        click.echo(f"{settings.enrollment_topic}: {count} partitions, as recorded; nothing to do")
        return
    before = "none recorded" if recorded is None else f"{recorded.partitions} recorded"
    click.echo(f"{settings.enrollment_topic}: {count} partitions now, {before}")
    if not yes:
        click.confirm("Record the new count (waits for every writer)?", abort=True)
    widest = max(count, recorded.partitions if recorded else 0)
    with _cli_lease(store, "offsets accept-partitions", partitions=widest):
        old = recorded.partitions if recorded else count
        accept_layout(
            store.db,
            settings.enrollment_topic,
            count,
            drain_until={p: end for p, end in ends.items() if p < old},
        )
    click.echo(
        f"recorded {count} partitions; ingestion resumes at the next tick, as one lane until "
        "the records of before the change are applied"
    )


def _who() -> str:
    from enrollment_pipeline.lib.mongo.lease import default_owner

    return default_owner()


def _cli_lease(store, description: str, *, partitions: int | None = None):
    """The writers' lease a command takes before it writes the read model: every partition's
    (of `partitions`, or of the count the writers use)."""
    from enrollment_pipeline.lib.mongo.layout import writer_partitions
    from enrollment_pipeline.lib.mongo.lease import LeasePolicy, WriterLease, all_partition_scopes

    if partitions is None:
        partitions = writer_partitions(store.db, KafkaSettings().kafka_topic_partitions)
    return WriterLease(
        store.db,
        scopes=all_partition_scopes(partitions),
        owner=f"enrollment-pipeline {description} ({_who()})",
        description=description,
        policy=LeasePolicy.from_settings(MongoSettings()),
    )


@click.group("dead-letters")
def dead_letters() -> None:
    """Rejected input: browse by reason and time, show one, re-drive after a fix.

    Example: `enrollment-pipeline dead-letters list --reason schema_violation`.
    """


@dead_letters.command("list")
@click.option("--reason", type=REASONS, help="Only this reason code.")
@click.option(
    "--since",
    type=click.DateTime(),
    help="Last seen at or after this time (UTC), e.g. 2026-11-01 or 2026-11-01T08:00:00.",
)
@click.option("--all", "include_all", is_flag=True, help="Include re-driven letters.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@JSON
def dead_letters_list(reason, since, include_all, limit, as_json) -> None:
    """Dead letters, newest first (open ones unless --all), with "N of M" when cut.

    Times are UTC; details name fields, never values. Example: `enrollment-pipeline
    dead-letters list --reason schema_violation --since 2026-11-01`.
    """
    from enrollment_pipeline.lib.masking import mask_text

    check(MongoSettings)
    store = enrollment_store().dead_letters
    query = {
        "reason": reason,
        "since": since.replace(tzinfo=since.tzinfo or UTC) if since else None,
        "status": None if include_all else "OPEN",
    }
    rows = store.listing(**query, limit=limit)
    total = store.count(**query) if len(rows) == limit else len(rows)
    if as_json:
        print_json(
            {
                "total": total,
                "shown": len(rows),
                "truncated": len(rows) < total,
                "dead_letters": [
                    {
                        "id": row["_id"],
                        "reason": row["reason"],
                        "status": row.get("status"),
                        "first_seen_at": row.get("first_seen_at"),
                        "last_seen_at": row.get("last_seen_at"),
                        "detail": mask_text(row.get("detail") or ""),
                    }
                    for row in rows
                ],
            }
        )
        return
    print_table(
        "id",
        "reason",
        "status",
        "last seen (UTC)",
        "detail",
        rows=[
            (
                row["_id"],
                row["reason"],
                row.get("status", ""),
                f"{row['last_seen_at']:%Y-%m-%d %H:%M:%S}",
                mask_text(row.get("detail") or "")[:120],
            )
            for row in rows
        ],
    )
    what = "dead letters" if include_all else "open dead letters"
    more = f"; the newest {len(rows)} shown, --limit shows more" if len(rows) < total else ""
    console.print(f"{len(rows)} of {total} {what}{more}")


@dead_letters.command("show")
@click.argument("letter_id")
@click.option("--reveal", is_flag=True, help="Show contact values (names, email, phone, …).")
@JSON
def dead_letters_show(letter_id, reveal, as_json) -> None:
    """One dead letter whole: reason, detail, key, source and the raw input as received.

    Contact values (names, email, phone, date of birth, address) are masked unless --reveal,
    also in raw input that is not valid JSON. Example: `enrollment-pipeline dead-letters show
    kafka:enrollment-events:3:1042`.
    """
    from enrollment_pipeline.lib.masking import mask_raw, mask_text
    from enrollment_pipeline.lib.mongo.dead_letters import raw_bytes

    check(MongoSettings)
    letter = enrollment_store().dead_letters.get(letter_id)
    if letter is None:
        raise click.ClickException(
            f"no dead letter {letter_id!r}; `enrollment-pipeline dead-letters list` shows them"
        )
    raw = raw_bytes(letter)
    letter.pop("raw_base64", None)
    text = None if raw is None else raw.decode("utf-8", "replace")
    if not reveal:
        text = None if text is None else mask_raw(text)
        letter["key"] = None if letter.get("key") is None else mask_text(letter["key"])
        letter["detail"] = mask_text(letter.get("detail") or "")
    letter["raw"] = text
    letter["masked"] = not reveal
    if as_json:
        print_json(letter)
        return
    source = ", ".join(f"{k} {v}" for k, v in (letter.get("source") or {}).items())
    for label, value in (
        ("dead letter", f"{letter['_id']} ({letter.get('status', '')})"),
        ("reason", letter.get("reason")),
        ("detail", letter.get("detail")),
        ("key", letter.get("key") or "-"),
        ("source", source or "-"),
        ("first seen", utc(letter.get("first_seen_at"))),
        ("last seen", utc(letter.get("last_seen_at"))),
    ):
        click.echo(f"{label:<12} {value}")
    note = "" if reveal else " (contact values masked; --reveal shows them)"
    click.echo(f"raw{note}:")
    click.echo(text if text is not None else "-")


@dead_letters.command("redrive")
@click.argument("letter_ids", nargs=-1)
@click.option("--reason", type=REASONS, help="Re-drive every open letter with this reason.")
@click.option(
    "--leads", is_flag=True, help="Deliver every parked or CRM-refused lead again, in order."
)
@click.option("--force", is_flag=True, help="Skip the check for delivery runs in flight.")
def dead_letters_redrive(letter_ids, reason, leads, force) -> None:
    """Apply kept input again after a fix: records are parsed again and applied (their leads
    published); `crm:` letters and parked leads are posted to the CRM again, in order.

    Example: `enrollment-pipeline dead-letters redrive --reason null_key` (after the producer
    fix), `enrollment-pipeline dead-letters redrive --leads` (after a CRM outage).
    """
    from enrollment_pipeline.lib.operations import redrive

    to_crm = leads or reason == "crm_rejected" or any(i.startswith("crm:") for i in letter_ids)
    crm_groups = (CrmSettings, LeadDeliverySettings) if to_crm else ()
    check(KafkaSettings, MongoSettings, IngestSettings, *crm_groups)
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
