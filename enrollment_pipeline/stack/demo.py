"""`enrollment-pipeline demo`: the whole pipeline on the local stack, within two minutes.

Starts the services that are not running yet, a trickle of realistic events (a first batch,
then a few records a second), and `dagster dev` with a persistent DAGSTER_HOME; once the UI
answers it turns the hourly schedule on and, when the first applications are in, launches one
follow-up run so emails appear without waiting for the hour. Ctrl-C or SIGTERM stops what it
started: `dagster dev` (SIGINT, then SIGKILL of its process group after a grace period), the
trickle, and the services it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enrollment_pipeline.lib.clients.dagster_api import DagsterApi, followup_run_config
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.settings import KafkaSettings, MongoSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.process import (
    PRIVATE_UMASK,
    private_append,
)

PROJECT = Path(__file__).resolve().parent.parent.parent
GRACE_S = 15.0


class Trickle(threading.Thread):
    """Produces synthetic events: `burst` records at once, then `rate` records a second."""

    def __init__(self, settings: KafkaSettings, *, burst: int, rate: float, seed: int) -> None:
        super().__init__(name="trickle", daemon=True)
        self.settings, self.burst, self.rate, self.seed = settings, burst, rate, seed
        self.stopped = threading.Event()
        self.produced = 0
        self.error: Exception | None = None

    def run(self) -> None:
        kafka = KafkaClient.from_settings(self.settings)
        topic = self.settings.enrollment_topic
        try:
            first = 1 + sum(kafka.end_offsets(topic).values())
            records = synthetic_events(
                1_000_000,
                seed=self.seed,
                start=datetime.now(UTC) - timedelta(days=2),
                mean_gap=timedelta(minutes=2),
                bad_fraction=0.01,
                first_application_number=first,
            )
            batch = [next(records) for _ in range(self.burst)]
            self.produced += kafka.produce_batch(topic, batch)
            per_tick = max(1, round(self.rate * 2))
            while not self.stopped.wait(2.0):
                self.produced += kafka.produce_batch(
                    topic, [next(records) for _ in range(per_tick)]
                )
        except Exception as exc:  # reported by the demo, which goes on serving the UI
            self.error = exc
        finally:
            kafka.close()


def _default_signals() -> None:
    """In the child: a script that started the demo in the background left SIGINT ignored,
    and an ignored SIGINT is inherited; `dagster dev` must get the default handlers back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Demo:
    stack: LocalStack
    port: int
    started_services: list[str] = field(default_factory=list)
    dagster: subprocess.Popen | None = None
    trickle: Trickle | None = None

    # -- start -------------------------------------------------------------------------------

    def start_stack(self, report: Callable[[str, float], None]) -> None:
        before = {s.name for s in self.stack.status() if s.running}
        self.stack.up(report)
        self.started_services = [s.name for s in self.stack.services if s.daemon.name not in before]
        os.environ.update(self.stack.env())  # DAGSTER_HOME among them (`stack up` made it)

    def start_trickle(self, burst: int, rate: float) -> None:
        self.trickle = Trickle(KafkaSettings(), burst=burst, rate=rate, seed=int(time.time()))
        self.trickle.start()

    @property
    def dagster_log(self) -> Path:
        return self.stack.settings.state_dir / "logs" / "dagster.log"

    def start_dagster(self) -> None:
        """`dagster dev` in its own process group, its output in `{state}/logs/dagster.log`."""
        home = Path(os.environ["DAGSTER_HOME"])
        with private_append(self.dagster_log) as log:
            self.dagster = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "dev",
                    "-w",
                    str(PROJECT / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                cwd=home,  # its dagster.yaml is the instance's (no warning about ours)
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_signals,
                umask=PRIVATE_UMASK,  # run logs and compute logs are personal data too
            )

    # -- talk to the UI ----------------------------------------------------------------------

    @property
    def api(self) -> DagsterApi:
        return DagsterApi(self.port)

    def wait_for_ui(self, timeout_s: float = 120) -> None:
        self.api.wait_until_up(
            timeout_s, alive=lambda: self.dagster is not None and self.dagster.poll() is None
        )

    def start_schedule(self) -> str:
        return self.api.start_schedule("hourly_broker_followups")

    def wait_for_applications(self, timeout_s: float = 90) -> bool:
        deadline = time.monotonic() + timeout_s
        found = False
        with MongoConnection.from_settings(MongoSettings()) as mongo:
            while time.monotonic() < deadline and not found:
                with mongo.explained_errors():  # one document is enough: no count of a model
                    found = mongo.db()[APPLICATIONS].find_one({}, {"_id": 1}) is not None
                time.sleep(2)
        return found

    def launch_followups(self) -> str:
        """One follow-up run at now, so emails show without waiting for the hour."""
        as_of = datetime.now(UTC).isoformat()
        return self.api.launch_run("send_broker_followups", followup_run_config(as_of))

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop what the demo started, within about 30 s; what was stopped, for the user."""
        stopped = []
        if self.trickle is not None:
            self.trickle.stopped.set()
            self.trickle.join(timeout=5)
            stopped.append(f"event trickle ({self.trickle.produced} records produced)")
        if self.dagster is not None and self.dagster.poll() is None:
            group = self.dagster.pid
            try:
                os.killpg(group, signal.SIGINT)
                self.dagster.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.dagster.wait(timeout=5)
            except ProcessLookupError:
                pass
            _kill_group(group)  # the webserver, daemon and code server, if any is left
            stopped.append("dagster dev")
        if self.started_services:
            for service in reversed(self.stack.services):
                if service.name in self.started_services and service.down():
                    stopped.append(service.name)
        return stopped


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
