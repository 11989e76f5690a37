"""`dagster dev` as a user starts it, for tests: real webserver and daemon, GraphQL access."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from enrollment_pipeline_tests.conftest import free_ports

DAGSTER = Path(sys.executable).parent / "dagster"


@dataclass
class DagsterDev:
    process: subprocess.Popen
    port: int
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]

    def assert_alive(self) -> None:
        assert self.process.poll() is None, self.log_tail()

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(
            f"http://127.0.0.1:{self.port}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def location_name(self) -> str:
        (location,) = self.graphql(
            "query { workspaceOrError { ... on Workspace { locationEntries { name } } } }"
        )["workspaceOrError"]["locationEntries"]
        return location["name"]


@contextmanager
def dagster_dev(env: dict[str, str], cwd: Path, *, timeout_s: float = 120) -> Iterator[DagsterDev]:
    """Start `dagster dev` on a free port with `env` added; stop its process group after."""
    (port,) = free_ports(1)
    log = cwd / "dagster.log"
    process = subprocess.Popen(
        [str(DAGSTER), "dev", "-m", "enrollment_pipeline.definitions", "-p", str(port)],
        env={**os.environ, "DAGSTER_HOME": str(cwd), **env},
        cwd=cwd,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    dev = DagsterDev(process, port, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            dev.assert_alive()
            assert time.monotonic() < deadline, "no UI: " + dev.log_tail()
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        yield dev
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
