"""The instance profiles and the Kubernetes shape stay valid for Dagster and in step, with no
cluster: Dagster's own schemas check every dagster.yaml (the instance's, then each configured
class's `config_type()`, K8sRunLauncher's from dagster-k8s included), every profile runs one
run a lane, the Helm values (deploy/helm/values.yaml) say what deploy/k8s/dagster.yaml says
and carry the repository's run tag limits, and no secret is written in the values.

The chart's own values.schema.json is not vendored (no copy of the 1.13.27 chart's is kept
here): `test_the_helm_values_use_the_charts_layout` checks the parts values.yaml sets against
a schema of the chart's value names written for this test, so a misspelt key fails here,
before any chart or cluster is at hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib.metadata import requires, version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dagster import DagsterInvalidConfigError
from dagster._config import Shape, process_config
from dagster._core.instance.config import (
    ConcurrencyConfig,
    dagster_instance_config,
    dagster_instance_config_schema,
)
from dagster._core.run_coordinator.queued_run_coordinator import (
    QueuedRunCoordinator,
    RunQueueConfig,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData
from dagster._serdes.config_class import class_from_code_pointer
from dagster._utils.tags import TagConcurrencyLimitsCounter

from enrollment_pipeline.settings import PipelineSettings

REPO = Path(__file__).resolve().parents[2]
K8S_PROFILE = "deploy/k8s/dagster.yaml"
# Each instance profile, and where its INGEST_PARALLEL_RUNS comes from.
PROFILES = [K8S_PROFILE, "deploy/dagster.yaml", "dagster.yaml"]
VALUES = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
HELM_README = (REPO / "deploy" / "helm" / "README.md").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())

LANE_TAG = "enrollment/lane"
LANE_LIMIT = {"key": LANE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
# The instance's blocks that name a class whose config_type() checks their `config`.
CONFIGURABLE = (
    "run_launcher",
    "run_coordinator",
    "run_storage",
    "event_log_storage",
    "schedule_storage",
    "scheduler",
    "compute_logs",
)
PIPELINE_SECRET = "enrollment-pipeline-secrets"
# The pipeline variables that reach the pods from the Secret PIPELINE_SECRET only.
SECRET_VARIABLES = {"MONGO_URI", "KAFKA_SASL_PASSWORD", "SMTP_PASSWORD", "LEAD_API_TOKEN"}
# Optional in that Secret (an IAM role may stand in), and read by boto3, not PipelineSettings.
OPTIONAL_SECRET_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
NEVER_IN_VALUES = {
    *SECRET_VARIABLES,
    *OPTIONAL_SECRET_VARIABLES,
    "DAGSTER_PG_URL",
    "DAGSTER_PG_PASSWORD",
    "POSTGRES_PASSWORD",
}


def _profile(path: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / path).read_text())


def _deployment() -> dict[str, Any]:
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def _env_names(node: object) -> Iterator[str]:
    """The variables a dagster.yaml reads (`{env: NAME}` anywhere in it)."""
    if isinstance(node, Mapping):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from _env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_names(item)


def _set_dummy_env(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    for name in set(_env_names(_profile(path))):
        monkeypatch.setenv(name, f"dummy-{name.lower()}")


def _run_queue(path: str) -> RunQueueConfig:
    """The run queue as Dagster computes it for the profile: the QueuedRunCoordinator built
    from its block, then the `concurrency` settings over it (DagsterInstance does the same)."""
    config = _profile(path)
    block = config["run_coordinator"]
    coordinator = ConfigurableClassData(
        block["module"], block["class"], yaml.safe_dump(block.get("config") or {})
    ).rehydrate(as_type=QueuedRunCoordinator)
    try:
        queue = ConcurrencyConfig.from_concurrency_settings(
            config.get("concurrency", {}), coordinator.get_run_queue_config()
        ).run_queue_config
    finally:
        coordinator.dispose()
    assert queue is not None
    return queue


def _parallel_runs(path: str) -> int:
    """INGEST_PARALLEL_RUNS where the profile runs: Helm values, docker-compose, the default."""
    if path == K8S_PROFILE:
        return int(_deployment()["env"]["INGEST_PARALLEL_RUNS"])
    if path == "deploy/dagster.yaml":
        return int(COMPOSE["x-pipeline-env"]["INGEST_PARALLEL_RUNS"])
    return PipelineSettings.model_fields["ingest_parallel_runs"].default


# (a) Dagster's own schemas accept every profile.


@pytest.mark.parametrize("path", PROFILES)
def test_dagster_accepts_the_instance_profile(path, monkeypatch):
    _set_dummy_env(monkeypatch, path)
    file = REPO / path
    # The instance's schema, and its cross-checks (concurrency against run_coordinator, storage).
    config, custom_instance_class = dagster_instance_config(str(file.parent), file.name)
    assert custom_instance_class is None
    # The same schema with the variables read: each `env:` is where a source may stand.
    resolved = process_config(Shape(dagster_instance_config_schema()), _profile(path))
    assert resolved.success, [error.message for error in resolved.errors]
    assert resolved.value is not None
    if "storage" in config:  # the one-block form: postgres_url from the environment
        assert resolved.value["storage"]["postgres"]["postgres_url"] == "dummy-dagster_pg_url"
    # Each configured class, loaded by its module and class, checks its own `config`.
    checked = []
    for key in CONFIGURABLE:
        if key not in config:
            continue
        block = config[key]
        cls = class_from_code_pointer(block["module"], block["class"])
        result = process_config(cls.config_type(), block.get("config") or {})  # type: ignore[attr-defined]
        assert result.success, f"{path} {key}: {[error.message for error in result.errors]}"
        checked.append(key)
    assert "run_coordinator" in checked


def test_the_kubernetes_instance_is_the_k8s_run_launcher_on_postgres(monkeypatch):
    _set_dummy_env(monkeypatch, K8S_PROFILE)
    config = _profile(K8S_PROFILE)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    from dagster_k8s import K8sRunLauncher

    assert class_from_code_pointer(launcher["module"], launcher["class"]) is K8sRunLauncher
    processed = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert processed.success
    assert processed.value is not None
    assert processed.value["instance_config_map"] == "dagster-instance"
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert config[storage]["module"].startswith("dagster_postgres.")
        password = config[storage]["config"]["postgres_db"]["password"]
        assert password == {"env": "DAGSTER_PG_PASSWORD"}, storage
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert _run_queue(K8S_PROFILE).max_concurrent_runs == 6


# (b) Every profile: one run a lane, and room for the lanes beside follow-ups and leads.


@pytest.mark.parametrize("path", PROFILES)
def test_every_profile_runs_one_run_a_lane(path):
    config = _profile(path)
    assert config["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1
    runs = config["concurrency"]["runs"]
    assert LANE_LIMIT in runs["tag_concurrency_limits"]
    assert runs["max_concurrent_runs"] >= 3
    # What the daemon's queue uses, as Dagster computes it.
    queue = _run_queue(path)
    assert queue.max_concurrent_runs >= _parallel_runs(path) + 2
    assert LANE_LIMIT in queue.tag_concurrency_limits
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}


@pytest.mark.parametrize("path", PROFILES)
def test_dagster_holds_a_second_run_of_a_lane_and_starts_the_other_lanes(path):
    queue = _run_queue(path)

    def run(tags: dict[str, str]) -> DagsterRun:
        return DagsterRun(job_name="ingest_enrollment_events", tags=tags)

    in_progress = [run({LANE_TAG: "0", "dagster/priority": "10"})]
    counter = TagConcurrencyLimitsCounter(list(queue.tag_concurrency_limits), in_progress)
    assert counter.is_blocked(run({LANE_TAG: "0", "dagster/priority": "-10"}))  # a shard
    assert not counter.is_blocked(run({LANE_TAG: "1", "dagster/priority": "10"}))
    assert not counter.is_blocked(run({}))  # follow-ups, lead delivery: no lane


# (c) The Helm values say what deploy/k8s/dagster.yaml says.


def _snaked(values: Mapping[str, Any]) -> dict[str, Any]:
    """A Helm values block under the instance's names (maxRuntimeSeconds: max_runtime_seconds)."""
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in values.items()}


def test_the_helm_values_and_the_kubernetes_instance_agree():
    instance = _profile(K8S_PROFILE)
    daemon = VALUES["dagsterDaemon"]
    assert daemon["enabled"]

    # The queue: dequeue settings on the coordinator; the limits under `concurrency` only
    # (the chart refuses both, Dagster too).
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"]
    assert coordinator["type"] == instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert _snaked(queued) == instance["run_coordinator"]["config"]
    concurrency = VALUES["concurrency"]
    assert concurrency["enabled"]
    assert _snaked(concurrency["pools"]) == instance["concurrency"]["pools"]
    assert _snaked(concurrency["runs"]) == instance["concurrency"]["runs"]

    # Run monitoring, retries, sensor and schedule threads: the same keys and numbers.
    assert _snaked(daemon["runMonitoring"]) == instance["run_monitoring"]
    assert _snaked(daemon["runRetries"]) == instance["run_retries"]
    assert _snaked(daemon["sensors"]) == instance["sensors"]
    assert _snaked(daemon["schedules"]) == instance["schedules"]
    assert VALUES["telemetry"] == instance["telemetry"]

    # The run launcher.
    launcher = VALUES["runLauncher"]
    assert launcher["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    rendered = instance["run_launcher"]["config"]
    assert k8s["imagePullPolicy"] == rendered["image_pull_policy"]
    assert k8s["loadInclusterConfig"] == rendered["load_incluster_config"]
    assert [s["name"] for s in k8s["envSecrets"]] == rendered["env_secrets"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == rendered.get("env_config_maps", [])
    assert k8s["resources"] == rendered["resources"]
    assert "image" not in k8s and "job_image" not in rendered  # the code location's image
    assert rendered["postgres_password_secret"] == VALUES["global"]["postgresqlSecretName"]

    # The storage: the external PostgreSQL of values.yaml, the password from the Secret.
    postgresql = VALUES["postgresql"]
    assert postgresql["enabled"] is False
    assert VALUES["generatePostgresqlPasswordSecret"] is False
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        db = instance[storage]["config"]["postgres_db"]
        assert db == {
            "username": postgresql["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": postgresql["postgresqlHost"],
            "db_name": postgresql["postgresqlDatabase"],
            "port": postgresql["service"]["port"],
            "params": postgresql["postgresqlParams"],
        }, storage


def test_kubernetes_monitors_and_retries_runs_as_the_production_profile():
    instance = _profile(K8S_PROFILE)
    production = _profile("deploy/dagster.yaml")
    monitoring = dict(instance["run_monitoring"])
    # max_resume_run_attempts: rendered by the chart (0: a dead run pod fails its run).
    assert monitoring.pop("max_resume_run_attempts") == 0
    # A run pod may wait for a node and an image pull: longer to start than a process.
    start_timeout = monitoring.pop("start_timeout_seconds")
    assert start_timeout == 300 > production["run_monitoring"]["start_timeout_seconds"]
    assert monitoring == {
        key: value
        for key, value in production["run_monitoring"].items()
        if key != "start_timeout_seconds"
    }
    assert 0 < monitoring["max_runtime_seconds"] <= 4 * 3600  # a hung run is stopped
    assert instance["run_retries"] == production["run_retries"]
    assert instance["concurrency"] == production["concurrency"]


def test_the_helm_run_queue_has_the_repositorys_tag_limits():
    """The chart's run queue limits are the ones the repository's instances use: the local
    dagster.yaml's and deploy/dagster.yaml's tag limits, production's 6 runs at once."""
    runs = VALUES["concurrency"]["runs"]
    local = _profile("dagster.yaml")["concurrency"]["runs"]
    production = _profile("deploy/dagster.yaml")["concurrency"]["runs"]
    assert runs["tagConcurrencyLimits"] == local["tag_concurrency_limits"]
    assert runs["tagConcurrencyLimits"] == production["tag_concurrency_limits"] == [LANE_LIMIT]
    assert runs["maxConcurrentRuns"] == production["max_concurrent_runs"] == 6
    # Only the concurrency block holds them: the chart refuses both places at once.
    queued = VALUES["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)


def test_dagster_refuses_the_run_limits_on_the_coordinator_beside_pools(monkeypatch, tmp_path):
    """Why values.yaml keeps the run limits under `concurrency.runs`: with pools configured,
    Dagster refuses max_concurrent_runs and tag_concurrency_limits on the run coordinator."""
    _set_dummy_env(monkeypatch, K8S_PROFILE)
    config = _profile(K8S_PROFILE)
    runs = config["concurrency"].pop("runs")
    config["run_coordinator"]["config"].update(runs)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DagsterInvalidConfigError, match="incompatible with the `concurrency"):
        dagster_instance_config(str(tmp_path))


def test_the_code_location_serves_the_definitions_from_the_projects_image():
    deployment = _deployment()
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "enrollment_pipeline.definitions"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '-m", "enrollment_pipeline.definitions"' in dockerfile
    assert f'"-p", "{deployment["port"]}"]' in dockerfile
    assert 'pip install ".[k8s]"' in dockerfile  # run pods load dagster_k8s
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert [s["name"] for s in deployment["envSecrets"]] == [PIPELINE_SECRET]
    # dagster-k8s is the library release of the pinned dagster.
    assert f"dagster=={version('dagster')}" in (requires("dagster-k8s") or [])
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'k8s = ["dagster-k8s=={version("dagster-k8s")}"]' in pyproject
    # The test extra installs the same release, so this module runs wherever the tests do.
    assert pyproject.count(f'"dagster-k8s=={version("dagster-k8s")}"') == 2
    assert len(re.findall(r'"dagster-k8s[=<>~!]', pyproject)) == 2


def test_the_helm_environment_is_every_pipeline_variable():
    env = _deployment()["env"]
    read = {name.upper() for name in PipelineSettings.model_fields}
    assert set(env) | SECRET_VARIABLES == read, (
        f"missing: {sorted(read - set(env) - SECRET_VARIABLES)}; stale: {sorted(set(env) - read)}"
    )
    assert env["INGEST_PARALLEL_RUNS"] == "4"
    assert all(isinstance(value, str) for value in env.values())  # a ConfigMap's values


def test_the_helm_environment_is_valid_settings(monkeypatch):
    for name, value in _deployment()["env"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MONGO_URI", "mongodb://user:dummy@mongo.example.internal:27017/")
    settings = PipelineSettings()
    assert settings.ingest_parallel_runs == 4
    assert settings.archive_root.startswith("s3://")  # run pods have no shared disk


# (d) The parts of values.yaml this deployment sets use the chart's value names.

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_NAMES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}, "optional": {}},
        "additionalProperties": False,
    },
}
_RESOURCES = {
    "type": "object",
    "properties": {"requests": _STRINGS, "limits": _STRINGS},
    "additionalProperties": False,
}
_IMAGE = {
    "type": "object",
    "required": ["repository", "pullPolicy"],
    "properties": {
        "repository": {"type": "string"},
        "tag": {"type": ["string", "integer", "null"]},
        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    },
    "additionalProperties": False,
}
_TAG_LIMITS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["key", "limit"],
        "properties": {
            "key": {"type": "string"},
            "value": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"applyLimitPerUniqueValue": {"type": "boolean"}},
                        "required": ["applyLimitPerUniqueValue"],
                        "additionalProperties": False,
                    },
                ]
            },
            "limit": {"type": "integer"},
        },
        "additionalProperties": False,
    },
}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_INT, _BOOL, _STR = {"type": "integer"}, {"type": "boolean"}, {"type": "string"}
_THREADS = _object(
    {"useThreads": _BOOL, "numWorkers": _INT, "numSubmitWorkers": _INT}, ("useThreads",)
)
# The chart's value names (its schema models: subschema daemon, run_launcher, postgresql,
# concurrency, global; dagster_user_deployments), for the keys values.yaml sets.
CHART_LAYOUT = _object(
    {
        "global": _object({"postgresqlSecretName": _STR}),
        "postgresql": _object(
            {
                "enabled": _BOOL,
                "postgresqlHost": _STR,
                "postgresqlUsername": _STR,
                "postgresqlPassword": _STR,
                "postgresqlDatabase": _STR,
                "postgresqlParams": {"type": "object"},
                "service": _object({"port": _INT}, ("port",)),
            }
        ),
        "generatePostgresqlPasswordSecret": _BOOL,
        "dagster-user-deployments": _object(
            {
                "enabled": _BOOL,
                "enableSubchart": _BOOL,
                "deployments": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": _STR,
                            "image": _IMAGE,
                            "dagsterApiGrpcArgs": {"type": "array", "items": _STR},
                            "port": _INT,
                            "includeConfigInLaunchedRuns": _object({"enabled": _BOOL}),
                            "env": _STRINGS,
                            "envConfigMaps": _NAMES,
                            "envSecrets": _NAMES,
                            "resources": _RESOURCES,
                        },
                        ("name", "image", "port"),
                    ),
                },
            }
        ),
        "runLauncher": _object(
            {
                "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
                "config": _object(
                    {
                        "k8sRunLauncher": _object(
                            {
                                "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                                "loadInclusterConfig": _BOOL,
                                "envConfigMaps": _NAMES,
                                "envSecrets": _NAMES,
                                "envVars": {"type": "array", "items": _STR},
                                "volumeMounts": {"type": "array"},
                                "volumes": {"type": "array"},
                                "resources": _RESOURCES,
                            },
                            # The chart's K8sRunLauncherConfig requires these.
                            (
                                "imagePullPolicy",
                                "loadInclusterConfig",
                                "envConfigMaps",
                                "envSecrets",
                                "envVars",
                                "volumeMounts",
                                "volumes",
                            ),
                        )
                    }
                ),
            },
            ("type", "config"),
        ),
        "dagsterDaemon": _object(
            {
                "enabled": _BOOL,
                "runCoordinator": _object(
                    {
                        "enabled": _BOOL,
                        "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
                        "config": _object(
                            {
                                "queuedRunCoordinator": _object(
                                    {
                                        "dequeueIntervalSeconds": _INT,
                                        "dequeueUseThreads": _BOOL,
                                        "dequeueNumWorkers": _INT,
                                    }
                                )
                            }
                        ),
                    }
                ),
                "runMonitoring": _object(
                    {
                        "enabled": _BOOL,
                        "startTimeoutSeconds": _INT,
                        "cancelTimeoutSeconds": _INT,
                        "maxRuntimeSeconds": _INT,
                        "pollIntervalSeconds": _INT,
                        "freeSlotsAfterRunEndSeconds": _INT,
                        "maxResumeRunAttempts": _INT,
                    }
                ),
                "runRetries": _object(
                    {"enabled": _BOOL, "maxRetries": _INT, "retryOnAssetOrOpFailure": _BOOL},
                    ("enabled",),
                ),
                # The chart's Sensors and Schedules models.
                "sensors": _THREADS,
                "schedules": _THREADS,
            }
        ),
        "concurrency": _object(
            {
                "enabled": _BOOL,
                "pools": _object({"defaultLimit": _INT, "granularity": {"enum": ["run", "op"]}}),
                "runs": _object({"maxConcurrentRuns": _INT, "tagConcurrencyLimits": _TAG_LIMITS}),
            }
        ),
        "telemetry": _object({"enabled": _BOOL}),
    }
)


def test_the_helm_values_use_the_charts_layout():
    jsonschema.validate(VALUES, CHART_LAYOUT)


# (e) No secret is written in values.yaml.

_SECRETISH = re.compile(r"password|token|secret_access_key|access_key_id|api_?key", re.I)
# Keys that name where a secret is, not the secret itself.
_REFERENCES = re.compile(r"secretname$|^envsecrets$|^generate.*secret$", re.I)


def _leaves(node: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _leaves(item, (*path, str(index)))
    else:
        yield path, node


def test_no_secret_is_written_in_the_helm_values():
    for path, value in _leaves(VALUES):
        key = path[-1]
        where = ".".join(path)
        if _SECRETISH.search(key) and not _REFERENCES.search(key):
            assert value in (None, ""), f"{where} holds a secret; use a Secret"
        if isinstance(value, str):
            assert not re.search(r"://[^/@\s]+:[^/@\s]*@", value), f"{where}: credentials in a URL"
    env = _deployment()["env"]
    assert not NEVER_IN_VALUES & set(env), "secrets reach the pods from the Secret only"
    for name in NEVER_IN_VALUES:
        assert name not in yaml.safe_dump(VALUES), name
    # Both the code location and every run pod take the pipeline's Secret.
    k8s = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    assert [s["name"] for s in k8s["envSecrets"]] == [PIPELINE_SECRET]


def test_the_readme_creates_the_secrets_the_pods_read():
    commands = re.findall(
        r"create secret generic (\S+)((?:\s*\\\n\s*--from-literal=\w[\w-]*=\S+)+)", HELM_README
    )
    created = {name: set(re.findall(r"--from-literal=([\w-]+)=", keys)) for name, keys in commands}
    assert created == {
        VALUES["global"]["postgresqlSecretName"]: {"postgresql-password"},
        PIPELINE_SECRET: SECRET_VARIABLES,
    }
