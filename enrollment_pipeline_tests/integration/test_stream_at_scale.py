"""A realistic stream through the sensor and the job, at a CI-sized scale.

Thousands of applications whose events arrive in two halves, each application's first
events in the first and the rest in the second, so the micro-batches of the second half
update applications created earlier: the steady state of a real topic.
`benchmarks/stream_scale.py` runs the same scenario at 20,000+ applications.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline_tests.pipeline import (
    Pipeline,
    assert_read_model_is_the_fold,
    drain,
    split_per_application,
)

pytestmark = pytest.mark.integration

APPLICATIONS = 2_000
MAX_EVENTS_PER_RUN = 1_500


def test_two_thousand_applications_in_two_halves_end_equal_to_the_fold(
    pipeline: Pipeline,
):
    records = list(synthetic_events(APPLICATIONS, seed=20, start=datetime(2026, 10, 1, tzinfo=UTC)))
    first_half, second_half = split_per_application(records)

    with dg.instance_for_test() as instance:
        pipeline.produce(first_half)
        first = drain(instance, pipeline, ingest_max_events_per_run=MAX_EVENTS_PER_RUN)
        pipeline.produce(second_half)
        second = drain(instance, pipeline, ingest_max_events_per_run=MAX_EVENTS_PER_RUN)

    runs = first + second
    assert len(runs) >= len(records) // MAX_EVENTS_PER_RUN
    assert sum(run["events_read"] for run in runs) == len(records)
    assert runs[-1]["lag_left"] == 0
    # Update-heavy: the second half updates most applications the first created ...
    assert sum(run["applications_touched"] for run in second) > 0.8 * APPLICATIONS
    assert sum(run["applications_written"] for run in second) > 0.8 * APPLICATIONS
    # ... and, the stream being in order per application, none needs its history re-read.
    assert sum(run["applications_reread"] for run in runs) == 0
    assert_read_model_is_the_fold(pipeline, records)
