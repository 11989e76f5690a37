"""One offset-range mechanism for every topic we consume: typed run config and a sensor factory.

A sensor built here compares a topic's end offsets with a consumer group's committed ones (in
Mongo, authoritative) and requests one run over exact `[start, end)` ranges. A tick makes one
ListOffsets call to Kafka (no group join), one Mongo query and two run-storage queries.
Partitions of a run still in flight are skipped, so two runs never cover one partition. A
failed run's range is asked for again under a new run key (Dagster skips a reused key
forever) until the attempt limit, then reported, not looped.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan, plan_ranges
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.dagster_runs import FAILED, IN_FLIGHT
from enrollment_pipeline.lib.mongo.lease import live_holder
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

RANGE_TAG = "enrollment/range"
PARTITIONS_TAG = "enrollment/partitions"
ATTEMPT_TAG = "enrollment/attempt"


class OffsetRange(dg.Config):
    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class OffsetRangeConfig(dg.Config):
    """The exact range a run covers; its sensor fills it in."""

    topic: str
    ranges: list[OffsetRange] = Field(default_factory=list)

    def plan(self) -> RangePlan | None:
        """The range to read; None when the run covers no offsets."""
        if not self.ranges:
            return None
        return RangePlan(
            self.topic,
            tuple(PartitionRange(r.partition, r.start, r.end) for r in self.ranges),
        )

    @staticmethod
    def ranges_of(plan: RangePlan) -> list[OffsetRange]:
        return [OffsetRange(partition=r.partition, start=r.start, end=r.end) for r in plan.ranges]


def range_metadata(plan: RangePlan | None) -> dict[str, str]:
    return {str(r.partition): f"[{r.start}, {r.end})" for r in plan.ranges} if plan else {}


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


def offset_range_sensor(
    *,
    name: str,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    group: str,
    topic: Callable[[PipelineSettingsResource], str],
    max_events: Callable[[PipelineSettingsResource], int],
    max_attempts: Callable[[PipelineSettingsResource], int],
    op_name: str,
    config_class: type[OffsetRangeConfig] = OffsetRangeConfig,
    description: str,
    when_idle: Callable[
        [dg.SensorEvaluationContext, MongoConnection, PipelineSettingsResource],
        dg.RunRequest | None,
    ]
    | None = None,
    waits_for_writers: bool = False,
    minimum_interval_seconds: int = 15,
) -> dg.SensorDefinition:
    """A sensor that keeps `group` caught up on `topic` by launching `job` over exact ranges;
    the range goes to the op `op_name` as its `config_class` (an `OffsetRangeConfig`).

    `when_idle` may ask for a run when nothing is lagging (lead delivery retries its parked
    leads that way). With `waits_for_writers`, a tick while another process holds the
    writers' lease of the read model (a CLI backfill, say) requests nothing: the run would
    only wait for it.
    """

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        mongo: MongoResource,
        settings: PipelineSettingsResource,
    ) -> dg.SensorResult | dg.SkipReason:
        topic_name = topic(settings)
        ends = kafka.get_client().end_offsets(topic_name)
        db = mongo.get_client()
        with db.explained_errors():
            holder = live_holder(db.db()) if waits_for_writers else None
            committed = EnrollmentStore.of(db).committed_offsets(group, topic_name)
        if holder is not None and not busy_partitions(context.instance, job.name, topic_name):
            return dg.SkipReason(f"the read model is being written by {holder}; waiting for it")
        plan = plan_ranges(
            topic_name,
            committed=committed,
            ends=ends,
            busy=busy_partitions(context.instance, job.name, topic_name),
            max_events=max_events(settings),
        )
        if plan is None:
            idle = when_idle(context, db, settings) if when_idle else None
            if idle is not None:
                return dg.SensorResult(run_requests=[idle])
            return dg.SkipReason("no new records, or every lagging partition has a run in flight")
        failures = context.instance.get_runs_count(
            dg.RunsFilter(job_name=job.name, statuses=FAILED, tags={RANGE_TAG: plan.key})
        )
        if failures >= max_attempts(settings):
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
                    run_config=dg.RunConfig(
                        ops={
                            op_name: config_class(
                                topic=plan.topic, ranges=OffsetRangeConfig.ranges_of(plan)
                            )
                        }
                    ),
                    tags={
                        RANGE_TAG: plan.key,
                        PARTITIONS_TAG: ",".join(str(p) for p in plan.partitions),
                        ATTEMPT_TAG: str(attempt),
                    },
                )
            ]
        )

    return _sensor
