"""`dagster dev` as a user starts it, for tests: real webserver and daemon, GraphQL access."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from enrollment_pipeline.lib.clients.dagster_api import DagsterApi, DagsterApiError
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

    @property
    def api(self) -> DagsterApi:
        return DagsterApi(self.port)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return self.api.graphql(query, variables)


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
        try:
            dev.api.wait_until_up(timeout_s, alive=lambda: process.poll() is None)
        except DagsterApiError as exc:
            raise AssertionError(f"{exc}\n{dev.log_tail()}") from exc
        yield dev
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
