"""The README's first command: `enrollment-pipeline demo` runs the main job end to end."""

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

from enrollment_pipeline.defs.mongo.resources import APPLICATIONS
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).parent / "enrollment-pipeline"


def test_demo_serves_the_ui_and_ingests_the_sample_events(services, tmp_path):
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
    mongo_uri = (
        subprocess.run(
            [str(CLI), "stack", "env"], env=env, capture_output=True, text=True, check=True
        )
        .stdout.split("MONGO_URI=")[1]
        .split()[0]
    )
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(
        [str(CLI), "demo", "--applications", "40", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    mongo = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=30_000)
    try:
        deadline = time.monotonic() + 240
        ui_up, ingested = False, 0
        while time.monotonic() < deadline and not (ui_up and ingested):
            assert demo.poll() is None, log.read_text()[-3000:]
            try:
                ui_up = requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
            except requests.ConnectionError:
                pass
            ingested = mongo[env["MONGO_DATABASE"]][APPLICATIONS].count_documents({})
            time.sleep(2)
        assert ui_up, "the Dagster UI did not answer: " + log.read_text()[-3000:]
        assert ingested > 0, "no sample event was ingested: " + log.read_text()[-3000:]
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=90)
        mongo.drop_database(env["MONGO_DATABASE"])
        mongo.close()
    time.sleep(1)
    leftovers = subprocess.run(
        ["pgrep", "-f", f"dagster.*{port}"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == "", "dagster dev outlived the demo"
