"""The README's first command: `enrollment-pipeline demo` shows the whole pipeline, and stops
everything it started when told to, also when a script started it in the background."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from pymongo import MongoClient

from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).parent / "enrollment-pipeline"
SCHEDULE_STATE = """
query { schedulesOrError(repositorySelector: {repositoryLocationName: "enrollment_pipeline",
                                              repositoryName: "__repository__"}) {
  ... on Schedules { results { name scheduleState { status } } } } }"""


def _ignore_sigint() -> None:
    """What `cmd &` in a non-interactive shell does to a background job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout + done.stderr


def _count(output: str) -> int:
    """The leading number of `stack mail` / `stack leads` ("12 emails in ...")."""
    return int(next(line for line in output.splitlines() if line[:1].isdigit()).split()[0])


def _processes_of(port: int) -> str:
    found = subprocess.run(
        ["pgrep", "-af", f"dagster.*{port}"], capture_output=True, text=True, check=False
    )
    return found.stdout


def test_demo_shows_the_pipeline_and_a_sigterm_stops_everything_it_started(services, tmp_path):
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "ENROLLMENT_TOPIC": f"demo-{uuid.uuid4().hex[:8]}",
        "LEAD_TOPIC": f"demo-leads-{uuid.uuid4().hex[:8]}",
        "MONGO_DATABASE": f"demo_{uuid.uuid4().hex[:8]}",
    }
    if services.stack is not None:  # the session's stack: `stack up` inside demo is a no-op
        env.update({f"STACK_{k.upper()}": str(v) for k, v in services.stack.model_dump().items()})
    # The MongoDB the demo's stack serves (with given services: your STACK_* settings).
    mongo_uri = _cli(env, "stack", "env").split("MONGO_URI=")[1].split()[0]
    leads_before = _count(_cli(env, "stack", "leads"))
    mail_before = _count(_cli(env, "stack", "mail"))
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(
        [str(CLI), "demo", "--applications", "80", "--port", str(port)],
        env=env,
        start_new_session=True,
        preexec_fn=_ignore_sigint,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    mongo = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=30_000)
    try:
        deadline = time.monotonic() + 120  # the README promises the pipeline within 2 minutes
        seen: dict[str, bool] = {}
        while (time.monotonic() < deadline and not all(seen.values())) or not seen:
            assert demo.poll() is None, log.read_text()[-3000:]
            output = log.read_text()
            seen = {
                "ui address printed": f"Dagster UI: http://127.0.0.1:{port}" in output,
                "schedule on": "hourly_broker_followups: RUNNING" in output,
                "follow-up run launched": "follow-up run launched now" in output,
                "applications": mongo[env["MONGO_DATABASE"]][APPLICATIONS].count_documents({}) > 0,
                "leads at the CRM": _count(_cli(env, "stack", "leads")) > leads_before,
                "emails caught": _count(_cli(env, "stack", "mail")) > mail_before,
            }
            time.sleep(3)
        assert all(seen.values()), f"{seen}\n{log.read_text()[-3000:]}"
        schedules = requests.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": SCHEDULE_STATE}, timeout=30
        ).json()["data"]["schedulesOrError"]["results"]
        assert {s["name"]: s["scheduleState"]["status"] for s in schedules} == {
            "hourly_broker_followups": "RUNNING",
            "read_model_drift_schedule": "RUNNING",  # on by default: it only reads
            "dead_letter_retention_schedule": "RUNNING",  # and so is the retention
        }
        produced = mongo[env["MONGO_DATABASE"]]["enrollment_events"].count_documents({})
        time.sleep(20)  # a trickle, not one burst: more events keep arriving
        assert mongo[env["MONGO_DATABASE"]]["enrollment_events"].count_documents({}) > produced
    finally:
        stopping = time.monotonic()
        demo.send_signal(signal.SIGTERM)  # to the demo only, as a supervisor would
        try:
            demo.wait(timeout=30)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
        mongo.drop_database(env["MONGO_DATABASE"])
        mongo.close()
    assert time.monotonic() - stopping < 30
    assert "Stopped: event trickle" in log.read_text() and "dagster dev" in log.read_text()
    time.sleep(1)
    assert _processes_of(port) == "", "dagster dev outlived the demo"
