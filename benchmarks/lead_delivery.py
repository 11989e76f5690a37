"""How fast leads reach the CRM: N leads on a fresh lead topic, delivered by one run.

Produces N Contract-4 leads (about three per application, so per-application order matters)
to a fresh topic, starts the local CRM test double as its own process on a free loopback port
(a real HTTP server that enforces idempotency keys), and times `deliver_range`, the code
`deliver_leads` runs, over the whole topic: POSTs, delivery records in Mongo, offsets. With
`--delay-ms` the CRM answers every POST that much later, as a remote API would.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/lead_delivery.py --leads 10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import port_for
from pymongo import monitoring

from enrollment_pipeline.domain.leads import LeadContact, LeadEvent, lead_event_id
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.leads.delivery import LeadDeliveryPolicy, deliver_range
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import PipelineSettings

STATUSES = ("NEW", "UPDATED", "CONVERTED")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def leads(count: int) -> list[tuple[bytes, bytes]]:
    records = []
    for i in range(count):
        app = f"APP-{i // len(STATUSES):06d}"
        status = STATUSES[i % len(STATUSES)]
        lead = LeadEvent(
            lead_event_id=lead_event_id(f"bench:{i}"),
            source_event_id=f"bench:{i}",
            application_id=app,
            lead_status=status,
            occurred_at=T0 + timedelta(minutes=i),
            contact=LeadContact(
                first_name="Jane",
                last_name="Doe",
                email="jane@example.com",
                phone=None,
                state="CA",
            ),
            product="MEDICAL",
        )
        records.append((app.encode(), lead.to_json_bytes()))
    return records


def start_crm(port: int, delay_ms: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enrollment_pipeline.stack.crm",
            *("--port", str(port), "--delay-ms", str(delay_ms)),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise SystemExit("the local CRM did not start")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    commands = Commands()
    monitoring.register(commands)
    settings = PipelineSettings()
    kafka = KafkaClient(KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers))
    topic = f"bench-leads-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic], partitions=args.partitions)
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"bench_leads_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    port = port_for.select_random()
    crm_process = start_crm(port, args.delay_ms)
    print(
        f"Kafka {settings.kafka_bootstrap_servers}, Mongo {settings.mongo_uri} ({mongo.engine()}), "
        f"CRM test double on :{port}"
        + (f" answering after {args.delay_ms:g} ms" if args.delay_ms else "")
    )
    try:
        records = leads(args.leads)
        for i in range(0, len(records), 10_000):
            kafka.produce_batch(topic, records[i : i + 10_000])
        ends = kafka.end_offsets(topic)
        plan = RangePlan(
            topic, tuple(PartitionRange(p, 0, e) for p, e in sorted(ends.items()) if e)
        )
        crm = CrmClient(base_url=f"http://127.0.0.1:{port}")
        store = EnrollmentStore.of(mongo)
        deliveries = LeadDeliveryStore(mongo.db(), mongo.writer())
        commands.counts.clear()
        started = time.perf_counter()
        report = deliver_range(
            kafka,
            store,
            deliveries,
            crm,
            plan,
            policy=LeadDeliveryPolicy(concurrency=args.concurrency, budget_s=3600),
        )
        elapsed = time.perf_counter() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/leads", timeout=30) as response:
            received = json.load(response)["count"]
        assert report.delivered == received == args.leads, (report.delivered, received)

        print(f"leads                     {args.leads:>10,} ({args.leads // 3:,} applications)")
        print(f"delivered (CRM count)     {received:>10,}")
        print(f"concurrency               {args.concurrency:>10}")
        print(f"wall time                 {elapsed:>10.1f} s")
        print(f"throughput                {args.leads / elapsed:>10,.0f} leads/s")
        print(
            f"request latency           p50 {report.latency_ms(0.5):.1f} ms, "
            f"p95 {report.latency_ms(0.95):.1f} ms"
        )
        print(
            f"Mongo commands in the run {sum(commands.counts.values()):>10,}: "
            + ", ".join(f"{n} {c}" for n, c in commands.counts.most_common())
        )
    finally:
        crm_process.terminate()
        crm_process.wait(timeout=10)
        mongo.client().drop_database(mongo.database)
        kafka.delete_topics([topic])
        kafka.close()


if __name__ == "__main__":
    main()
