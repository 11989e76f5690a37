"""The 20,000-application stream with 1, 2 and 4 ingestion runs in parallel, as deployed.

For each INGEST_PARALLEL_RUNS value: a fresh 4-partition topic and database, the whole stream
produced first, then `dagster dev` (webserver, daemon with the queued run coordinator, a
process per run) on the production profile of the instance (`deploy/dagster.yaml`:
PostgreSQL from DAGSTER_PG_URL, the lane tag limit) with the sensor on, until every partition
is committed. Prints records/s from the first run's start to the last commit, the runs and how
many were in flight at once, the CPU seconds each kind of process used (sampled from /proc
every second: what limits it on this machine), and checks the read model against the fold of
the log each time.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/parallel_runs.py --applications 20000 --runs 1 2 4
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import port_for

from enrollment_pipeline.lib.clients.dagster_api import DagsterApi
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.settings import PipelineSettings
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 4
TICK = os.sysconf("SC_CLK_TCK")


def _kind(pid: str) -> str | None:
    """What a process is, from its command line: the stack's services or Dagster's parts."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "kafka.Kafka" in cmd:
        return "kafka"
    if "ferretdb" in cmd or "mongod" in cmd:
        return "mongodb/ferretdb"
    if cmd.startswith("postgres") or "/postgres " in cmd:
        return "postgresql"
    if "execute_run" in cmd or "multiprocessing.spawn" in cmd:
        return "dagster run processes"  # the code server spawns each run's process
    if "dagster" in cmd:
        return "dagster webserver/daemon/code server"
    return None


@dataclass
class CpuSampler:
    """CPU seconds by kind of process, integrated from /proc every `every` seconds (a process
    that ends between two samples loses at most that last second)."""

    every: float = 1.0
    seconds: Counter[str] = field(default_factory=Counter)
    _last: dict[str, tuple[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _kinds: dict[str, str | None] = field(default_factory=dict)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            if pid not in self._kinds:
                self._kinds[pid] = _kind(pid)
            kind = self._kinds[pid]
            if kind is None:
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used = (int(fields[11]) + int(fields[12])) / TICK
            before = self._last.get(pid)
            self.seconds[kind] += used - before[1] if before else 0.0
            self._last[pid] = (kind, used)


@dataclass
class Lanes:
    parallel_runs: int
    records: int
    seconds: float
    runs: int
    most_in_flight: int
    cpu: Counter[str]

    def lines(self) -> list[str]:
        rate = self.records / self.seconds if self.seconds else 0.0
        busiest = ", ".join(f"{kind} {secs:.0f} s" for kind, secs in self.cpu.most_common())
        return [
            f"INGEST_PARALLEL_RUNS={self.parallel_runs}: {self.records:,} records in "
            f"{self.seconds:.1f} s = {rate:,.0f} records/s; {self.runs} runs, at most "
            f"{self.most_in_flight} in flight at once",
            f"  CPU over those {self.seconds:.0f} s ({os.cpu_count()} cores = "
            f"{(os.cpu_count() or 1) * self.seconds:.0f} s): " + busiest,
        ]


def _runs(home: Path, topic: str) -> list[tuple[float, float]]:
    """(start, end) of this measure's ingestion runs (the run storage is shared: PostgreSQL)."""
    import dagster as dg

    from enrollment_pipeline.defs.offset_ranges import RANGE_TAG

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name="ingest_enrollment_events"))
        return [
            (r.start_time, r.end_time or time.time())
            for r in records
            if r.start_time and r.dagster_run.tags.get(RANGE_TAG, "").startswith(f"{topic}:")
        ]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def measure(
    settings: PipelineSettings, applications: int, parallel_runs: int, *, seed: int
) -> Lanes:
    kafka = KafkaClient(KafkaConfig.from_settings(settings))
    topic, leads = f"lanes-{uuid.uuid4().hex[:8]}", f"lanes-leads-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, leads], partitions=PARTITIONS)
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"lanes_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    home = Path(tempfile.mkdtemp(prefix="lanes-home-"))
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    records = list(
        synthetic_events(applications, seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC))
    )
    for i in range(0, len(records), 10_000):
        kafka.produce_batch(topic, records[i : i + 10_000])
    ends = kafka.end_offsets(topic)
    store = EnrollmentStore.of(mongo)
    port = port_for.select_random()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ENROLLMENT_TOPIC": topic,
        "LEAD_TOPIC": leads,
        "MONGO_DATABASE": mongo.database,
        "INGEST_PARALLEL_RUNS": str(parallel_runs),
        # Lanes get work only if a tick's lag splits: runs of at most an eighth of the stream.
        "INGEST_MAX_EVENTS_PER_RUN": str(max(1_000, len(records) // 8)),
    }
    dev = subprocess.Popen(
        [
            *(sys.executable, "-m", "dagster", "dev"),
            *("-w", str(REPO / "workspace.yaml"), "-p", str(port)),
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with CpuSampler() as cpu:
            DagsterApi(port).wait_until_up(300, alive=lambda: dev.poll() is None)
            deadline = time.monotonic() + 3_600
            while True:
                committed = store.committed_offsets(READ_MODEL_GROUP, topic)
                if all(committed.get(p, 0) >= end for p, end in ends.items()):
                    done = time.time()
                    break
                if dev.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dagster dev stopped, or the stream was not applied")
                time.sleep(0.5)
            spans = _runs(home, topic)
        first_start = min(start for start, _ in spans)
        lanes = Lanes(
            parallel_runs,
            len(records),
            done - first_start,
            len(spans),
            _most_at_once(spans),
            cpu.seconds,
        )
        assert_read_model_is_the_fold(Pipeline(kafka, mongo, topic, leads), records)
        return lanes
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        mongo.client().drop_database(mongo.database)
        mongo.close()
        kafka.delete_topics([topic, leads])
        kafka.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=20_000)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    settings = PipelineSettings()
    print(
        f"Kafka {settings.kafka_bootstrap_servers}, Mongo {settings.mongo_uri}, "
        f"{os.cpu_count()} cores"
    )
    for parallel_runs in args.runs:
        lanes = measure(settings, args.applications, parallel_runs, seed=args.seed)
        print("\n".join(lanes.lines()), flush=True)
        print("  read model == fold of the log: yes", flush=True)


if __name__ == "__main__":
    main()
