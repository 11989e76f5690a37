"""How fresh the read model is through `dagster dev`: an event every few seconds, the sensor on.

Starts `dagster dev` (webserver, daemon, code server) on the production profile of the
instance (`deploy/dagster.yaml`: PostgreSQL from DAGSTER_PG_URL, queued runs) with a fresh
topic and database, waits for a first event to go through (the cold start is not counted),
then produces one ApplicationSubmitted every `--every` seconds and measures, for each, the time
from the produce to its document in MongoDB. Where the seconds go comes from the run records:
event → run created (the sensor's tick), created → started (the queue and the run process
starting, code loaded), started → document (the batch).

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/freshness.py --events 24 --every 4 [--lanes 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import port_for

from enrollment_pipeline.lib.clients.dagster_api import DagsterApi
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.settings import KafkaSettings, MongoSettings
from enrollment_pipeline_tests import factories as f

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Freshness:
    latencies: list[float]
    to_run_created: list[float]
    created_to_started: list[float]
    started_to_document: list[float]

    @staticmethod
    def quantile(values: list[float], q: float) -> float:
        if len(values) < 2:
            return values[0] if values else 0.0
        return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]

    def summary(self) -> str:
        def row(name: str, values: list[float]) -> str:
            return (
                f"{name:<28} p50 {self.quantile(values, 0.5):5.1f} s   "
                f"p95 {self.quantile(values, 0.95):5.1f} s   max {max(values):5.1f} s"
            )

        return "\n".join(
            [
                row("produce -> document", self.latencies),
                row("  produce -> run created", self.to_run_created),
                row("  run created -> started", self.created_to_started),
                row("  run started -> document", self.started_to_document),
            ]
        )


def _ingestion_runs(home: Path) -> list[tuple[float, float | None]]:
    """(created, started) of every ingestion run, from the instance's run storage."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name="ingest_enrollment_events"))
        return [
            (r.create_timestamp.timestamp(), r.start_time) for r in records if r.create_timestamp
        ]


def measure(events: int, every: float, *, lanes: int = 1, ui_timeout: float = 180) -> Freshness:
    kafka_settings, mongo_settings = KafkaSettings(), MongoSettings()
    topic = f"fresh-{uuid.uuid4().hex[:8]}"
    database = f"fresh_{uuid.uuid4().hex[:8]}"
    kafka = KafkaClient.from_settings(kafka_settings)
    kafka.ensure_topics([topic, f"{topic}-leads"], partitions=3)
    mongo = MongoConnection.from_settings(mongo_settings)
    home = Path(tempfile.mkdtemp(prefix="fresh-home-"))
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    port = port_for.select_random()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ENROLLMENT_TOPIC": topic,
        "LEAD_TOPIC": f"{topic}-leads",
        "MONGO_DATABASE": database,
        "INGEST_PARALLEL_RUNS": str(lanes),
    }
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),
            "-p",
            str(port),
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    db = mongo.client()[database]
    try:
        DagsterApi(port).wait_until_up(ui_timeout, alive=lambda: dev.poll() is None)

        def produced_and_seen(app_id: str, minutes: float) -> tuple[float, float]:
            kafka.produce_batch(topic, [f.record(f.submitted(app_id, minutes))])
            sent = time.time()
            while db[APPLICATIONS].find_one({"_id": app_id}, {"_id": 1}) is None:
                if time.time() - sent > 120:
                    raise TimeoutError(f"{app_id} did not reach the read model in 120 s")
                time.sleep(0.05)
            return sent, time.time()

        produced_and_seen("APP-WARM", 0)  # the first run loads the code cold: not counted
        sent_at, latencies = [], []
        for i in range(events):
            started = time.time()
            sent, seen = produced_and_seen(f"APP-F{i:03d}", i + 1)
            sent_at.append(sent)
            latencies.append(seen - sent)
            time.sleep(max(0.0, every - (time.time() - started)))
        runs = sorted(_ingestion_runs(home))
        to_created, to_started, to_document = [], [], []
        for sent, latency in zip(sent_at, latencies, strict=True):
            created, start = next(((c, s) for c, s in runs if c >= sent), (None, None))
            if created is None or start is None:
                continue
            to_created.append(created - sent)
            to_started.append(start - created)
            to_document.append(sent + latency - start)
        return Freshness(latencies, to_created, to_started, to_document)
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        mongo.client().drop_database(database)
        mongo.close()
        kafka.delete_topics([topic, f"{topic}-leads"])
        kafka.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--every", type=float, default=4.0, help="Seconds between events.")
    parser.add_argument(
        "--lanes", type=int, default=1, help="INGEST_PARALLEL_RUNS (the topic has 3 partitions)."
    )
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(measure(args.events, args.every, lanes=args.lanes).summary())


if __name__ == "__main__":
    main()
