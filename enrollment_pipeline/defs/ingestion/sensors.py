"""`enrollment_events_sensor`: compare end offsets with committed ones, request exact ranges.

A tick makes one ListOffsets call to Kafka (no group join), one Mongo query and two
run-storage queries. Partitions of a run still in flight are skipped, so two runs never
cover one partition. A failed run's range is asked for again under a new run key (Dagster
skips a reused key forever) until `INGEST_MAX_RANGE_ATTEMPTS`, then reported, not looped.
"""

import dagster as dg

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.ingestion.ranges import plan_ranges
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import READ_MODEL_GROUP, PipelineSettings

RANGE_TAG = "enrollment/range"
PARTITIONS_TAG = "enrollment/partitions"
ATTEMPT_TAG = "enrollment/attempt"

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def busy_partitions(instance: dg.DagsterInstance, job_name: str, topic: str) -> set[int]:
    """Partitions of `topic` that a run not yet finished covers."""
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
    return {
        int(p)
        for run in runs
        if run.tags.get(RANGE_TAG, "").startswith(f"{topic}:")
        for p in run.tags.get(PARTITIONS_TAG, "").split(",")
        if p.strip()
    }


@dg.sensor(
    job=ingest_enrollment_events,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launch a micro-batch over the enrollment-events offsets not yet applied.",
)
def enrollment_events_sensor(
    context: dg.SensorEvaluationContext, kafka: KafkaResource, mongo: MongoResource
) -> dg.SensorResult | dg.SkipReason:
    settings = PipelineSettings()
    topic = settings.enrollment_topic
    ends = kafka.end_offsets(topic)
    with mongo.explained_errors():
        committed = EnrollmentStore.of(mongo).committed_offsets(READ_MODEL_GROUP, topic)
    job_name = ingest_enrollment_events.name
    plan = plan_ranges(
        topic,
        committed=committed,
        ends=ends,
        busy=busy_partitions(context.instance, job_name, topic),
        max_events=settings.ingest_max_events_per_run,
    )
    if plan is None:
        return dg.SkipReason("no new events, or every lagging partition has a run in flight")
    failures = context.instance.get_runs_count(
        dg.RunsFilter(job_name=job_name, statuses=FAILED, tags={RANGE_TAG: plan.key})
    )
    if failures >= settings.ingest_max_range_attempts:
        message = (
            f"range {plan.key} failed {failures} times; not requested again. Inspect the "
            "failed runs, fix the cause, then rerun one from the UI or reset the offsets"
        )
        context.log.error(message)
        return dg.SkipReason(message)
    attempt = failures + 1
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{plan.key}#{','.join(str(r.end) for r in plan.ranges)}#{attempt}",
                run_config={"ops": {"ingest_offset_range": {"config": plan.to_config()}}},
                tags={
                    RANGE_TAG: plan.key,
                    PARTITIONS_TAG: ",".join(str(p) for p in plan.partitions),
                    ATTEMPT_TAG: str(attempt),
                },
            )
        ]
    )
