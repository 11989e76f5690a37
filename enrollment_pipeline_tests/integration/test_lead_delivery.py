"""Lead delivery to a real HTTP server on loopback: the local CRM test double, or
pytest-httpserver where a test needs a server that misbehaves in a precise way.

Leads reach the lead topic the way they do in production: enrollment events are ingested and
ingestion publishes them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from enrollment_pipeline.defs.leads.jobs import deliver_leads
from enrollment_pipeline.defs.leads.sensors import lead_events_sensor
from enrollment_pipeline.defs.offset_ranges import ATTEMPT_TAG, PARTITIONS_TAG
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.leads.delivery import (
    LeadDeliveryPolicy,
    deliver_range,
)
from enrollment_pipeline.lib.mongo.collections import DEAD_LETTERS, LEAD_DELIVERIES
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.stack.crm import LocalCrm
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import run_job
from enrollment_pipeline_tests.pipeline import (
    Pipeline,
    assert_read_model_is_the_fold,
    expected_state,
)

pytestmark = pytest.mark.integration

CONTACT_VALUES = ("Jane", "Doe", "jane.doe@example.com", "+1-555-0100")


def client(url: str, **kwargs) -> CrmClient:
    options = {
        "token": "s3cret-token",
        "allow_http": True,  # the CRM is on loopback
        "backoff_initial_s": 0.01,
        "read_timeout_s": 5.0,
    }
    return CrmClient(base_url=url.rstrip("/"), **{**options, **kwargs})


def lead_plan(pipeline: Pipeline) -> RangePlan | None:
    committed = pipeline.store.committed_offsets(LEAD_INTEGRATION_GROUP, pipeline.lead_topic)
    ends = pipeline.kafka.end_offsets(pipeline.lead_topic)
    ranges = tuple(
        PartitionRange(p, committed.get(p, 0), end)
        for p, end in sorted(ends.items())
        if end > committed.get(p, 0)
    )
    return RangePlan(pipeline.lead_topic, ranges) if ranges else None


def deliver(pipeline: Pipeline, crm: CrmClient, *, checkpoint=None, redrive=False, **limits):
    """One delivery run over the lead topic; `limits` are LeadDeliveryPolicy's fields."""
    deliveries = LeadDeliveryStore(pipeline.mongo.db(), pipeline.mongo.writer())
    return deliver_range(
        pipeline.kafka,
        pipeline.store,
        deliveries,
        crm,
        lead_plan(pipeline),
        policy=LeadDeliveryPolicy(**limits),
        redrive=redrive,
        **({"checkpoint": checkpoint} if checkpoint else {}),
    )


def publish(pipeline: Pipeline, events: list[dict]) -> list[dict]:
    """Ingest enrollment events; the leads ingestion published, in topic order."""
    pipeline.produce([f.record(e) for e in events])
    pipeline.ingest()
    return pipeline.leads()


def updated(app_id: str, minutes: float, phone: str) -> dict:
    return f.event(
        "ApplicationUpdated", app_id, minutes, {"changes": {"applicant": {"phone": phone}}}
    )


def three_leads(app_id: str) -> list[dict]:
    """NEW, UPDATED, UPDATED (the application stays open)."""
    return [
        f.submitted(app_id, 0),
        updated(app_id, 10, "+1-555-0111"),
        f.approved(app_id, 20),
        updated(app_id, 30, "+1-555-0122"),
    ]


def deliveries_of(pipeline: Pipeline) -> dict[str, dict]:
    return {d["_id"]: d for d in pipeline.mongo.db()[LEAD_DELIVERIES].find()}


# -- the whole flow through Dagster ----------------------------------------------------------


def test_every_consenting_lead_arrives_once_in_order_through_the_sensor_and_job(
    pipeline: Pipeline, local_crm: LocalCrm
):
    records = list(synthetic_events(150, seed=8, start=f.T0))
    pipeline.produce(records)
    pipeline.ingest()
    published = pipeline.leads()
    _, expected = expected_state(records)
    assert sorted(x["lead_event_id"] for x in published) == sorted(
        x.lead_event_id for x in expected
    )
    resources = {**pipeline.resources(lead_max_per_run=200), "crm": client(local_crm.url)}

    runs = 0
    with dg.instance_for_test() as instance:
        while True:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = lead_events_sensor(context)
            if isinstance(result, dg.SkipReason):
                break
            (request,) = result.run_requests
            ranges = request.run_config["ops"]["deliver_lead_range"]["config"]["ranges"]
            assert sum(r["end"] - r["start"] for r in ranges) <= 200
            outcome = run_job(
                deliver_leads,
                run_config=request.run_config,
                resources=resources,
                instance=instance,
                tags=request.tags,
            )
            (materialization,) = outcome.asset_materializations_for_node("deliver_lead_range")
            assert materialization.asset_key.to_user_string() == "crm_leads"
            runs += 1
            assert runs < 20

    # Exactly the published leads, each once, byte for byte the contract payload.
    received = local_crm.state.leads
    assert sorted(json.dumps(x, sort_keys=True) for x in received) == sorted(
        json.dumps(x, sort_keys=True) for x in published
    )
    assert set(local_crm.state.requests.values()) == {1}
    # Applications that never consented have no lead at the CRM.
    consenting = {x.application_id for x in expected}
    assert {x["application_id"] for x in received} == consenting
    assert len(consenting) < 150  # the generator has non-consenting applicants too
    # Each application's leads arrived in topic order.
    in_topic: dict[str, list[str]] = defaultdict(list)
    for lead in published:
        in_topic[lead["application_id"]].append(lead["lead_event_id"])
    arrived: dict[str, list[str]] = defaultdict(list)
    for lead in received:
        arrived[lead["application_id"]].append(lead["lead_event_id"])
    assert arrived == in_topic
    assert set(d["status"] for d in deliveries_of(pipeline).values()) == {"DELIVERED"}
    committed = pipeline.store.committed_offsets(LEAD_INTEGRATION_GROUP, pipeline.lead_topic)
    assert committed == {
        p: e for p, e in pipeline.kafka.end_offsets(pipeline.lead_topic).items() if e
    }
    in_kafka = pipeline.kafka.group_offsets(LEAD_INTEGRATION_GROUP)  # the group spans topics
    assert {p: o for (t, p), o in in_kafka.items() if t == pipeline.lead_topic} == committed
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["p95_latency_ms"] >= metadata["p50_latency_ms"] > 0


def test_the_token_and_the_contact_never_reach_logs_metadata_or_run_config(
    pipeline: Pipeline, local_crm: LocalCrm
):
    publish(pipeline, [f.submitted("APP-1"), f.submitted("APP-2")])
    resources = {**pipeline.resources(), "crm": client(local_crm.url)}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            (request,) = lead_events_sensor(context).run_requests
        outcome = run_job(
            deliver_leads, run_config=request.run_config, resources=resources, instance=instance
        )
        assert outcome.success
        logs = [repr(e) for e in instance.all_logs(outcome.run_id)]
        shown = "\n".join(logs) + json.dumps(request.run_config, default=str)
    assert len(local_crm.state.leads) == 2
    for secret in ("s3cret-token", *CONTACT_VALUES):
        assert secret not in shown


# -- a misbehaving CRM -----------------------------------------------------------------------


class FlappingCrm:
    """Flaps the same way for every lead, whatever the interleaving of concurrent requests:
    each key's first request gets a 500, every other key's second a 429 with Retry-After, and
    one request (the sixth) stalls past the client's read timeout; otherwise 201, or 409 for a
    key it took already. Logs what each key got."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s, self.count, self.stalled = stall_s, 0, False
        self.taken: set[str] = set()
        self.answers: dict[str, list[str]] = defaultdict(list)
        self.order: dict[str, int] = {}  # in which order the keys first came
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        key = request.headers["Idempotency-Key"]
        with self.lock:
            self.count += 1
            stall = not self.stalled and self.count == 6
            self.stalled = self.stalled or stall
            attempt = len(self.answers[key]) + 1
            throttled = self.order.setdefault(key, len(self.order)) % 2 == 0
        if stall:
            with self.lock:
                self.taken.add(key)
                self.answers[key].append("stalled")
            time.sleep(self.stall_s)  # the client gave up; the CRM took the lead anyway
            return Response("{}", status=201)
        with self.lock:
            if attempt == 1:
                self.answers[key].append("500")
                return Response("oops", status=500)
            if attempt == 2 and throttled:
                self.answers[key].append("429")
                return Response("slow down", status=429, headers={"Retry-After": "1"})
            answer = "409" if key in self.taken else "201"
            self.taken.add(key)
            self.answers[key].append(answer)
            return Response("{}", status=int(answer))


def test_a_flapping_crm_gets_every_lead_and_no_key_again_after_a_success(
    pipeline: Pipeline, threaded_httpserver: HTTPServer
):
    httpserver = threaded_httpserver
    published = publish(pipeline, [f.submitted(f"APP-{i}", i) for i in range(12)])
    crm = FlappingCrm(stall_s=3.0)
    httpserver.expect_request("/leads", method="POST").respond_with_handler(crm)

    report = deliver(
        pipeline,
        client(httpserver.url_for("/"), read_timeout_s=1.0, max_attempts=8),
        concurrency=3,
    )

    assert report.delivered == len(published) == 12
    assert (report.parked, report.permanently_failed, report.unfinished) == (0, 0, 0)
    assert report.retried > 0
    assert crm.taken == {x["lead_event_id"] for x in published}
    assert any("stalled" in answers for answers in crm.answers.values())
    assert any("429" in answers for answers in crm.answers.values())
    for key, answers in crm.answers.items():
        # The client saw exactly one success per key, and it was that key's last request.
        seen = [a for a in answers if a != "stalled"]
        assert seen[-1] in ("201", "409") and all(a in ("500", "429") for a in seen[:-1]), key

    # Replaying the whole topic (offsets reset) posts nothing: the records say delivered.
    pipeline.store.commit_offsets(
        [LEAD_INTEGRATION_GROUP],
        pipeline.lead_topic,
        dict.fromkeys(range(3), 0),
        now=f.T0,
        run_id=None,
    )
    before = crm.count
    again = deliver(pipeline, client(httpserver.url_for("/")))
    assert (again.already_delivered, again.delivered, crm.count) == (12, 0, before)


def test_a_refused_lead_is_dead_lettered_and_holds_back_only_its_application(
    pipeline: Pipeline, local_crm: LocalCrm, httpserver
):
    published = publish(pipeline, three_leads("APP-A") + three_leads("APP-B"))
    first_of_a = next(x for x in published if x["application_id"] == "APP-A")
    refused = {first_of_a["lead_event_id"]}

    def crm(request: Request) -> Response:
        body = request.get_json()
        if body["lead_event_id"] in refused:
            # CRMs echo the offending value back: it must not reach the dead letter.
            return Response(
                json.dumps(
                    {
                        "error": f"invalid phone for {body['contact']['email']}: "
                        f"{body['contact']['phone']}"
                    }
                ),
                status=400,
            )
        forwarded = local_crm.state  # the double keeps arrival order
        with forwarded.lock:
            forwarded.leads.append(body)
        return Response("{}", status=201)

    httpserver.expect_request("/leads", method="POST").respond_with_handler(crm)
    report = deliver(pipeline, client(httpserver.url_for("/")))

    assert (report.delivered, report.permanently_failed, report.parked_behind) == (3, 1, 2)
    arrived = [x["application_id"] for x in local_crm.state.leads]
    assert arrived == ["APP-B"] * 3
    letter = pipeline.mongo.db()[DEAD_LETTERS].find_one(
        {"_id": f"crm:{first_of_a['lead_event_id']}"}
    )
    assert letter["reason"] == "crm_rejected" and letter["status"] == "OPEN"
    assert letter["detail"].startswith("HTTP 400")
    assert not any(value in json.dumps(letter, default=str) for value in CONTACT_VALUES)
    states = {
        d["_id"]: (d["status"], d.get("parked_reason")) for d in deliveries_of(pipeline).values()
    }
    a_ids = [x["lead_event_id"] for x in published if x["application_id"] == "APP-A"]
    assert [states[i] for i in a_ids] == [
        ("FAILED", None),
        ("PARKED", "behind"),
        ("PARKED", "behind"),
    ]
    # The offsets moved past them all: parked leads wait in lead_deliveries, not in Kafka.
    assert lead_plan(pipeline) is None

    # New leads of the blocked application wait too; a plain run retries nothing refused.
    publish(pipeline, [f.withdrawn("APP-A", 40)])
    assert deliver(pipeline, client(httpserver.url_for("/"))).parked_behind == 1

    refused.clear()  # the CRM team fixed their validation
    redriven = deliver(pipeline, client(httpserver.url_for("/")), redrive=True)
    assert (redriven.delivered, redriven.redriven) == (4, 4)
    a_arrived = [
        x["lead_event_id"] for x in local_crm.state.leads if x["application_id"] == "APP-A"
    ]
    assert a_arrived == [
        x["lead_event_id"] for x in pipeline.leads() if x["application_id"] == "APP-A"
    ]
    assert (
        pipeline.mongo.db()[DEAD_LETTERS].find_one({"_id": letter["_id"]})["status"] == "REDRIVEN"
    )
    docs = deliveries_of(pipeline).values()
    assert {d["status"] for d in docs} == {"DELIVERED"}
    assert not any("lead" in d for d in docs)  # the payload copy is gone once delivered


def test_a_crash_after_the_post_before_the_record_reposts_with_the_same_key(
    pipeline: Pipeline, local_crm: LocalCrm
):
    published = publish(pipeline, [f.submitted(f"APP-{i}", i) for i in range(5)])

    def crash(step: str) -> None:
        if step == "after_posts_before_records":
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        deliver(pipeline, client(local_crm.url), checkpoint=crash)
    assert len(local_crm.state.leads) == 5
    assert deliveries_of(pipeline) == {}
    assert lead_plan(pipeline) is not None  # nothing committed

    rerun = deliver(pipeline, client(local_crm.url))
    assert rerun.delivered == 5
    keys = {x["lead_event_id"] for x in published}
    assert dict(local_crm.state.requests) == dict.fromkeys(keys, 2)  # the same keys again
    assert len(local_crm.state.leads) == 5  # and the CRM took each once
    assert lead_plan(pipeline) is None


def test_a_down_crm_fails_the_run_then_parked_leads_are_retried_by_the_sensor(
    pipeline: Pipeline, local_crm: LocalCrm
):
    publish(pipeline, [f.submitted(f"APP-{i}", i) for i in range(8)])
    local_crm.fail_next(10, 503)
    resources = {
        **pipeline.resources(lead_concurrency=1, lead_park_minutes=0),
        "crm": client(local_crm.url, max_attempts=2),
    }
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            (request,) = lead_events_sensor(context).run_requests
        failed = run_job(
            deliver_leads,
            run_config=request.run_config,
            resources=resources,
            instance=instance,
            tags=request.tags,
            raise_on_error=False,
        )
        assert not failed.success
        failure = next(e for e in failed.all_events if e.is_failure)
        assert "the CRM at" in str(failure.event_specific_data)
        parked = [d for d in deliveries_of(pipeline).values() if d["status"] == "PARKED"]
        assert len(parked) == 5  # the breaker opened after 5 leads in a row; 3 not started
        assert local_crm.state.leads == []

        # The CRM is back: the sensor asks for the rest of the range, then for the parked.
        for _ in range(4):
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = lead_events_sensor(context)
            if isinstance(result, dg.SkipReason):
                break
            (request,) = result.run_requests
            assert run_job(
                deliver_leads,
                run_config=request.run_config,
                resources=resources,
                instance=instance,
                tags=request.tags,
            ).success
    assert len(local_crm.state.leads) == 8
    assert {d["status"] for d in deliveries_of(pipeline).values()} == {"DELIVERED"}


def test_a_failing_range_is_requested_again_then_reported(pipeline: Pipeline, local_crm):
    publish(pipeline, [f.submitted(f"APP-{i}", i) for i in range(4)])
    resources = {**pipeline.resources(lead_max_range_attempts=2), "crm": client(local_crm.url)}
    broken = {
        **resources,
        "mongo": MongoConnection(
            MongoConfig(
                uri="mongodb://127.0.0.1:1/",
                database=pipeline.mongo.database,
                server_selection_timeout_ms=300,
            )
        ),
    }
    keys, seen = [], []
    with dg.instance_for_test() as instance:
        for _ in range(1 + 3):  # the whole range once, then each failed partition alone
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                outcome = lead_events_sensor(context)
            if isinstance(outcome, dg.SkipReason):
                break
            (request,) = outcome.run_requests
            seen.append((request.tags[PARTITIONS_TAG], request.tags[ATTEMPT_TAG]))
            keys.append(request.run_key)
            assert not run_job(
                deliver_leads,
                run_config=request.run_config,
                resources=broken,
                instance=instance,
                tags=request.tags,
                raise_on_error=False,
            ).success
        else:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                outcome = lead_events_sensor(context)
    partitions = seen[0][0].split(",")
    assert seen == [(",".join(partitions), "1")] + [(p, "2") for p in partitions]
    assert len(set(keys)) == len(keys)
    assert isinstance(outcome, dg.SkipReason)
    assert outcome.skip_message.count("failed 2 times") == len(partitions)
    assert local_crm.state.leads == []


def test_the_operator_redrives_a_refused_lead_from_the_command_line(
    pipeline: Pipeline, local_crm: LocalCrm, services, monkeypatch
):
    from click.testing import CliRunner

    from enrollment_pipeline.cli import main

    published = publish(pipeline, [*three_leads("APP-A"), f.submitted("APP-B", 1)])
    refused_id = next(x["lead_event_id"] for x in published if x["application_id"] == "APP-A")
    local_crm.fail_next(1, 422)  # the first lead the CRM sees (APP-A's first) is refused
    report = deliver(pipeline, client(local_crm.url), concurrency=1)
    assert (report.permanently_failed, report.parked_behind, report.delivered) == (1, 2, 1)

    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "LEAD_TOPIC": pipeline.lead_topic,
        "LEAD_API_URL": local_crm.url,
        "LEAD_API_TOKEN": "s3cret-token",
        "LEAD_API_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    listed = CliRunner().invoke(main, ["dead-letters", "list", "--reason", "crm_rejected"])
    assert f"crm:{refused_id}" in listed.output and "HTTP 422" in listed.output

    result = CliRunner().invoke(main, ["dead-letters", "redrive", f"crm:{refused_id}", "--force"])
    assert result.exit_code == 0, result.output
    assert "leads delivered: 3" in result.output
    a_arrived = [
        x["lead_event_id"] for x in local_crm.state.leads if x["application_id"] == "APP-A"
    ]
    assert a_arrived == [x["lead_event_id"] for x in published if x["application_id"] == "APP-A"]
    assert {d["status"] for d in deliveries_of(pipeline).values()} == {"DELIVERED"}


def test_a_redrive_from_the_command_line_parks_for_lead_park_minutes(
    pipeline: Pipeline, local_crm: LocalCrm, services, monkeypatch
):
    """The CLI builds its delivery policy where the runs do: a lead still refused parks for
    LEAD_PARK_MINUTES, not a default of its own."""
    from click.testing import CliRunner

    from enrollment_pipeline.cli import main

    (lead,) = publish(pipeline, [f.submitted("APP-P", 0)])
    local_crm.fail_next(1, 422)
    assert deliver(pipeline, client(local_crm.url)).permanently_failed == 1
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "LEAD_TOPIC": pipeline.lead_topic,
        "LEAD_API_URL": local_crm.url,
        "LEAD_API_TOKEN": "s3cret-token",
        "LEAD_API_ALLOW_HTTP": "true",
        "LEAD_API_MAX_ATTEMPTS": "1",
        "LEAD_PARK_MINUTES": "90",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    local_crm.fail_next(5, 503)  # the CRM is down when the operator re-drives
    before = datetime.now(UTC)

    result = CliRunner().invoke(main, ["dead-letters", "redrive", "--leads", "--force"])

    assert result.exit_code == 0, result.output
    record = deliveries_of(pipeline)[lead["lead_event_id"]]
    assert record["status"] == "PARKED"
    waited = record["next_attempt_at"] - before
    assert timedelta(minutes=89) < waited < timedelta(minutes=91)


def test_a_parked_head_that_goes_through_leaves_the_next_one_at_the_head(
    pipeline: Pipeline, httpserver
):
    published = publish(pipeline, three_leads("APP-A"))
    first, second, third = [x["lead_event_id"] for x in published]
    down: set[str] = {first}
    arrived: list[str] = []

    def crm(request: Request) -> Response:
        lead_id = request.get_json()["lead_event_id"]
        if lead_id in down:
            return Response("busy", status=503)
        arrived.append(lead_id)
        return Response("{}", status=201)

    httpserver.expect_request("/leads", method="POST").respond_with_handler(crm)
    crm_client = client(httpserver.url_for("/"), max_attempts=1)
    retry_now = timedelta(0)

    deliver(pipeline, crm_client, park_for=retry_now)
    assert deliveries_of(pipeline)[third]["blocked_by"] == first

    down = {second}  # the first goes through, the second runs out of attempts
    report = deliver(pipeline, crm_client, park_for=retry_now)
    assert (report.delivered, report.parked) == (1, 1)
    states = deliveries_of(pipeline)
    assert states[second]["parked_reason"] == "retries_exhausted"
    assert (states[third]["parked_reason"], states[third]["blocked_by"]) == ("behind", second)

    down = set()
    deliver(pipeline, crm_client, park_for=retry_now)
    assert arrived == [first, second, third]


def test_thousands_of_waiting_leads_are_redriven_in_one_run_while_ingestion_writes(
    pipeline: Pipeline, threaded_httpserver: HTTPServer
):
    """At the scale of a CRM outage: every application's leads wait (thousands of new delivery
    records), then one redrive run rewrites all of them while an ingestion run writes the read
    model at the same time."""
    first = list(synthetic_events(1_000, seed=21, start=f.T0))
    pipeline.produce(first)
    pipeline.ingest()
    published = pipeline.leads()
    assert len(published) > 1_000
    refusing = True
    arrived: list[dict] = []
    lock = threading.Lock()

    def crm(request: Request) -> Response:
        if refusing:
            return Response('{"error": "maintenance"}', status=422)
        with lock:
            arrived.append(request.get_json())
        return Response("{}", status=201)

    threaded_httpserver.expect_request("/leads", method="POST").respond_with_handler(crm)
    crm_client = client(threaded_httpserver.url_for("/"))
    refused = deliver(pipeline, crm_client)
    applications = {x["application_id"] for x in published}
    assert refused.permanently_failed == len(applications)
    assert refused.permanently_failed + refused.parked_behind == len(published)

    # Meanwhile more events arrive and an ingestion run writes the read model.
    later = list(synthetic_events(1_000, seed=22, start=f.T0, first_application_number=5_001))
    pipeline.produce(later)
    # Its own clients, as another run's process would have.
    writer = Pipeline(
        KafkaClient(KafkaConfig(bootstrap_servers=pipeline.kafka.bootstrap_servers)),
        MongoConnection(MongoConfig(uri=pipeline.mongo.uri, database=pipeline.mongo.database)),
        pipeline.topic,
        pipeline.lead_topic,
    )
    ingestion = threading.Thread(target=writer.ingest)
    refusing = False
    ingestion.start()
    redriven = deliver_range(  # no range: the waiting leads only (new ones come next run)
        pipeline.kafka,
        pipeline.store,
        LeadDeliveryStore(pipeline.mongo.db(), pipeline.mongo.writer()),
        crm_client,
        None,
        redrive=True,
    )
    ingestion.join(timeout=300)
    assert not ingestion.is_alive()

    assert redriven.redriven == len(published)
    assert {d["status"] for d in deliveries_of(pipeline).values()} == {"DELIVERED"}
    in_topic: dict[str, list[str]] = defaultdict(list)
    for lead in published:
        in_topic[lead["application_id"]].append(lead["lead_event_id"])
    received: dict[str, list[str]] = defaultdict(list)
    for lead in arrived:
        received[lead["application_id"]].append(lead["lead_event_id"])
    assert received == in_topic  # each once, in order per application
    assert_read_model_is_the_fold(pipeline, first + later)


# -- a CRM that redirects, and a client that must not be fooled ------------------------------


class RedirectingCrm:
    """A CRM behind a load balancer that answers some POSTs `302 Location: /moved`, where a
    GET answers 200 without taking anything (what made `requests` record leads as delivered
    that the CRM never had). Otherwise the CRM proper: 201 the first time a key comes, 409
    after. `taken` is the CRM's own list of what it took, in arrival order."""

    def __init__(self, redirected: set[str]) -> None:
        self.redirected = redirected  # application ids whose POSTs are redirected
        self.taken: list[dict] = []
        self.posts: dict[str, int] = defaultdict(int)
        self.moved_hits = 0
        self.lock = threading.Lock()

    def leads(self, request: Request) -> Response:
        assert request.headers.get("Authorization") == "Bearer s3cret-token"
        lead = request.get_json()
        with self.lock:
            self.posts[lead["lead_event_id"]] += 1
            if lead["application_id"] in self.redirected:
                return Response("", status=302, headers={"Location": "/moved"})
            if any(x["lead_event_id"] == lead["lead_event_id"] for x in self.taken):
                return Response("{}", status=409)
            self.taken.append(lead)
        return Response("{}", status=201)

    def moved(self, request: Request) -> Response:
        with self.lock:
            self.moved_hits += 1
        return Response('{"status": "ok"}', status=200)


def test_redirected_leads_are_never_recorded_delivered_and_are_redriven_after_the_fix(
    pipeline: Pipeline, threaded_httpserver: HTTPServer, services, monkeypatch
):
    from click.testing import CliRunner

    from enrollment_pipeline.cli import main

    redirected_apps = {"APP-1", "APP-3"}
    published = publish(
        pipeline,
        [*three_leads("APP-1"), *three_leads("APP-2"), f.submitted("APP-3", 2)]
        + [f.submitted(f"APP-{i}", i) for i in range(4, 8)],
    )
    crm = RedirectingCrm(redirected=set(redirected_apps))
    threaded_httpserver.expect_request("/leads", method="POST").respond_with_handler(crm.leads)
    threaded_httpserver.expect_request("/moved").respond_with_handler(crm.moved)
    url = threaded_httpserver.url_for("/").rstrip("/")
    resources = {**pipeline.resources(), "crm": client(url)}

    runs = []
    with dg.instance_for_test() as instance:
        for _ in range(5):
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = lead_events_sensor(context)
            if isinstance(result, dg.SkipReason):
                break
            (request,) = result.run_requests
            runs.append(
                run_job(
                    deliver_leads,
                    run_config=request.run_config,
                    resources=resources,
                    instance=instance,
                    tags=request.tags,
                )
            )
    assert len(runs) == 1 and runs[0].success  # a redirect fails a lead, never the run

    # Nothing is DELIVERED that the CRM did not take; the CRM took every other lead once.
    delivered = {i for i, d in deliveries_of(pipeline).items() if d["status"] == "DELIVERED"}
    assert delivered == {x["lead_event_id"] for x in crm.taken}
    assert {x["application_id"] for x in crm.taken} == {f"APP-{i}" for i in (2, 4, 5, 6, 7)}
    assert crm.moved_hits == 0  # the redirect was never followed
    (materialization,) = runs[0].asset_materializations_for_node("deliver_lead_range")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["delivered"], metadata["permanently_failed"]) == (7, 2)
    letters = {
        d["_id"]: d for d in pipeline.mongo.db()[DEAD_LETTERS].find({"reason": "crm_rejected"})
    }
    first_of = {
        app: next(x["lead_event_id"] for x in published if x["application_id"] == app)
        for app in redirected_apps
    }
    assert set(letters) == {f"crm:{lead_id}" for lead_id in first_of.values()}
    for letter in letters.values():
        assert letter["detail"].startswith("HTTP 302: redirect to '/moved' not followed")
        assert "LEAD_API_URL" in letter["detail"]
    states = deliveries_of(pipeline)
    assert [
        states[x["lead_event_id"]]["status"] for x in published if x["application_id"] == "APP-1"
    ] == [
        "FAILED",
        "PARKED",
        "PARKED",
    ]

    # The load balancer is fixed; the operator re-drives from the command line.
    crm.redirected.clear()
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "LEAD_TOPIC": pipeline.lead_topic,
        "LEAD_API_URL": url,
        "LEAD_API_TOKEN": "s3cret-token",
        "LEAD_API_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = CliRunner().invoke(main, ["dead-letters", "redrive", "--leads", "--force"])
    assert result.exit_code == 0, result.output
    assert "leads delivered: 4" in result.output

    # Every lead is at the CRM exactly once, each application's in topic order.
    assert sorted(x["lead_event_id"] for x in crm.taken) == sorted(
        x["lead_event_id"] for x in published
    )
    for app in redirected_apps:
        assert [x["lead_event_id"] for x in crm.taken if x["application_id"] == app] == [
            x["lead_event_id"] for x in published if x["application_id"] == app
        ]
    assert {d["status"] for d in deliveries_of(pipeline).values()} == {"DELIVERED"}
    assert {
        d["status"] for d in pipeline.mongo.db()[DEAD_LETTERS].find({"_id": {"$in": list(letters)}})
    } == {"REDRIVEN"}
    assert crm.moved_hits == 0
    # Each redirected head was posted twice (refused, then taken); nothing else was re-sent.
    assert {k: n for k, n in crm.posts.items() if n > 1} == dict.fromkeys(first_of.values(), 2)


def test_a_token_over_plain_http_fails_the_run_at_its_start_without_touching_a_lead(
    pipeline: Pipeline, local_crm: LocalCrm
):
    publish(pipeline, [f.submitted(f"APP-{i}", i) for i in range(3)])
    plain = CrmClient(base_url=local_crm.url, token="s3cret-token")  # no LEAD_API_ALLOW_HTTP
    resources = {**pipeline.resources(), "crm": plain}
    with dg.instance_for_test() as instance:
        # The sensor needs no CRM (the daemon gives it only the resources it names).
        with dg.build_sensor_context(instance=instance, resources=pipeline.resources()) as context:
            (request,) = lead_events_sensor(context).run_requests
        failed = run_job(
            deliver_leads,
            run_config=request.run_config,
            resources=resources,
            instance=instance,
            tags=request.tags,
            raise_on_error=False,
        )
        assert not failed.success
        messages = "\n".join(str(e.event_specific_data) for e in failed.all_events if e.is_failure)
        assert "LEAD_API_ALLOW_HTTP" in messages and "LEAD_API_URL" in messages
        assert "s3cret-token" not in "\n".join(repr(e) for e in instance.all_logs(failed.run_id))
    assert local_crm.state.requests == {}  # nothing was sent
    assert deliveries_of(pipeline) == {}  # no lead failed, parked or dead-lettered for it
    assert pipeline.mongo.db()[DEAD_LETTERS].count_documents({}) == 0
    assert lead_plan(pipeline) is not None  # the range waits for a fixed run
