"""The few calls of Dagster's GraphQL API that the demo (and the tests) make, as the UI would:
launch a run with its config, read its status, turn a schedule on."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

LOCATIONS = "query { workspaceOrError { ... on Workspace { locationEntries { name } } } }"
LAUNCH_RUN = """
mutation($p: ExecutionParams!) {
  launchRun(executionParams: $p) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message }
  }
}"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
START_SCHEDULE = """
mutation($s: ScheduleSelector!) {
  startSchedule(scheduleSelector: $s) {
    __typename ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


class DagsterApiError(RuntimeError):
    """The API answered with errors, or an action did not succeed."""


@dataclass(frozen=True)
class DagsterApi:
    """A Dagster webserver on this machine (`dagster dev` or `dagster-webserver`)."""

    port: int
    host: str = "127.0.0.1"
    timeout_s: float = 30.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def is_up(self) -> bool:
        try:
            return requests.get(f"{self.url}/server_info", timeout=2).ok
        except requests.RequestException:
            return False

    def wait_until_up(self, timeout_s: float, *, alive: Callable[[], bool] = lambda: True) -> None:
        """Wait for the webserver; `alive` says whether its process still runs."""
        deadline = time.monotonic() + timeout_s
        while not self.is_up():
            if not alive():
                raise DagsterApiError("the Dagster process exited before its UI answered")
            if time.monotonic() > deadline:
                raise DagsterApiError(f"the Dagster UI did not answer within {timeout_s:.0f} s")
            time.sleep(1)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        body = response.json()
        if "errors" in body:
            raise DagsterApiError(str(body["errors"])[:1000])
        data: dict[str, Any] = body["data"]
        return data

    def location(self) -> str:
        """The name of the (one) code location."""
        entries = self.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
        return str(entries[0]["name"])

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 30.0) -> DagsterApi:
        """The webserver at `url` (http://host:port, as DAGSTER_URL gives it)."""
        parsed = urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/"):
            raise DagsterApiError(f"{url!r} is not http://host:port of a Dagster webserver")
        return cls(parsed.port or 80, parsed.hostname, timeout_s)

    def launch_run(
        self, job: str, run_config: dict[str, Any], *, tags: dict[str, str] | None = None
    ) -> str:
        """Launch `job` with `run_config` and `tags` (as the launchpad does); its run id.
        Under the queued run coordinator the run waits in the queue."""
        result = self.graphql(
            LAUNCH_RUN,
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": self.location(),
                        "repositoryName": "__repository__",
                        "jobName": job,
                    },
                    "runConfigData": run_config,
                    "executionMetadata": {
                        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
                    },
                }
            },
        )["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            errors = "; ".join(e["message"] for e in result.get("errors", []))
            raise DagsterApiError(result.get("message") or errors or result["__typename"])
        return str(result["run"]["runId"])

    def run_status(self, run_id: str) -> str:
        return str(self.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"])

    def wait_for_run(self, run_id: str, timeout_s: float) -> str:
        """The run's final status (SUCCESS, FAILURE or CANCELED)."""
        deadline = time.monotonic() + timeout_s
        while (status := self.run_status(run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise DagsterApiError(f"run {run_id} still {status} after {timeout_s:.0f} s")
            time.sleep(2)
        return status

    def start_schedule(self, name: str) -> str:
        """Turn a schedule on (the UI's toggle); its new status."""
        result = self.graphql(
            START_SCHEDULE,
            {
                "s": {
                    "repositoryLocationName": self.location(),
                    "repositoryName": "__repository__",
                    "scheduleName": name,
                }
            },
        )["startSchedule"]
        if "scheduleState" not in result:
            raise DagsterApiError(result.get("message", result["__typename"]))
        return str(result["scheduleState"]["status"])


def followup_run_config(as_of: str) -> dict[str, Any]:
    """The run config of `send_broker_followups` for one hour."""
    return {"ops": {"broker_followup_emails": {"config": {"as_of": as_of}}}}
