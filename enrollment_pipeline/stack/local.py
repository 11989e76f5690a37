"""The local service stack: PostgreSQL, a MongoDB wire server, Kafka, an SMTP sink and a
CRM test double.

Started in dependency order, each with a health check before `up` returns; stopped in
reverse order by pid. Data and logs live under one state folder, downloads and builds in a
cache folder keyed by version, both outside the repository. The state folder holds personal
data and the generated secrets (`{state}/secrets`): it is its owner's only, and the services
listen on loopback unless STACK_ALLOW_REMOTE=true.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from enrollment_pipeline.settings import KafkaSettings, StackSettings
from enrollment_pipeline.stack.kafka import SASL_MECHANISM, SASL_USER, Kafka, KafkaSasl
from enrollment_pipeline.stack.mongo import AUTH_USER, MongoAuth, MongoWire
from enrollment_pipeline.stack.postgres import Postgres
from enrollment_pipeline.stack.process import (
    Daemon,
    ServiceError,
    port_open,
    private_dir,
    restrict_tree,
    write_private,
)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | stopped | hung (alive, but does not answer its health check)
    pid: int | None
    address: str
    log_file: Path

    @property
    def running(self) -> bool:
        return self.state == "running"


# The secured FerretDB's own PostgreSQL database: two FerretDB processes must not share one.
SECURE_FERRETDB_DATABASE = "ferretdb_secure"


class SmtpSink:
    """aiosmtpd on loopback, keeping every message in a Maildir (`{state}/mail`)."""

    name = "smtp"

    def __init__(self, state_dir: Path, host: str, port: int, timeout_s: float) -> None:
        self.maildir = state_dir / "mail"
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.daemon = Daemon(
            name="smtp",
            pid_file=state_dir / "run" / "smtp.pid",
            log_file=state_dir / "logs" / "smtp.log",
            marker=str(self.maildir),
        )

    def up(self) -> None:
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_SMTP_PORT",
            timeout_s=self.timeout_s,
        ):
            return
        for folder in ("tmp", "new", "cur"):  # a Maildir: aiosmtpd creates none of them
            private_dir(self.maildir / folder)
        proc = self.daemon.start(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"{self.host}:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(self.maildir),
            ]
        )
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def down(self) -> bool:
        return self.daemon.stop(timeout_s=10)

    def messages(self) -> list[Message]:
        """The emails the sink kept, newest first (their headers; the body stays on disk)."""
        from email.parser import BytesHeaderParser
        from email.utils import parsedate_to_datetime

        folder = self.maildir / "new"
        found = []
        for path in folder.glob("*") if folder.is_dir() else []:
            with path.open("rb") as handle:
                headers = BytesHeaderParser().parse(handle)
            try:
                sent = parsedate_to_datetime(headers.get("Date", ""))
            except (TypeError, ValueError):
                sent = None
            found.append(
                Message(
                    sent=sent,
                    date=headers.get("Date", ""),
                    to=headers.get("To", ""),
                    subject=headers.get("Subject", ""),
                    path=path,
                )
            )
        found.sort(key=lambda m: m.sent.timestamp() if m.sent else 0.0, reverse=True)
        return found


@dataclass(frozen=True)
class Message:
    """One email the SMTP sink kept."""

    sent: datetime | None
    date: str
    to: str
    subject: str
    path: Path


class CrmDouble:
    """The local CRM test double (`stack/crm.py`): what LEAD_API_URL points at locally."""

    name = "crm"

    def __init__(self, state_dir: Path, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.received_log = state_dir / "crm" / "received.jsonl"
        self.daemon = Daemon(
            name="crm",
            pid_file=state_dir / "run" / "crm.pid",
            log_file=state_dir / "logs" / "crm.log",
            marker="enrollment_pipeline.stack.crm",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> None:
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_CRM_PORT",
            timeout_s=self.timeout_s,
        ):
            return
        private_dir(self.received_log.parent)
        proc = self.daemon.start(
            [
                sys.executable,
                "-m",
                "enrollment_pipeline.stack.crm",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--log",
                str(self.received_log),
            ]
        )
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)

    def is_ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def down(self) -> bool:
        return self.daemon.stop(timeout_s=10)

    def leads(self) -> dict:
        """What the double took: `{"count": n, "leads": [...]}` in arrival order."""
        import requests

        return requests.get(f"{self.url}/leads", timeout=5).json()


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(settings: StackSettings) -> None:
    """The services hold personal data: on loopback only, unless explicitly allowed."""
    if not settings.allow_remote and not is_loopback(settings.host):
        raise ServiceError(
            f"STACK_HOST={settings.host} is not a loopback address: the stack's services "
            "hold personal data and would be reachable from the network; set "
            "STACK_ALLOW_REMOTE=true to allow it"
        )


class LocalStack:
    """What `enrollment-pipeline stack up|down|status|env` drives.

    It reads the stack's settings and, of the pipeline's, only the values it uses: topics and
    partitions, and in `env()` those it repeats (a bad EMAIL_BACKEND never stops the stack).
    """

    def __init__(self, stack: StackSettings, pipeline: KafkaSettings) -> None:
        check_host(stack)
        self.settings, self.pipeline = stack, pipeline
        state, cache, host = stack.state_dir, stack.cache_dir, stack.host
        timeout = stack.start_timeout_s
        self.secrets_dir = state / "secrets"
        self.postgres = Postgres(state, host, stack.postgres_port, timeout)
        self.mongo = MongoWire(
            engine=stack.mongo_engine,
            state_dir=state,
            cache_dir=cache,
            ferretdb_version=stack.ferretdb_version,
            host=host,
            port=stack.mongo_port,
            postgres_url=self.postgres.url("ferretdb"),
            timeout_s=timeout,
        )
        # Secured pieces (STACK_SECURE): built always, so `down` and `env --secure` find them.
        self.secure_mongo = MongoWire(
            engine=stack.mongo_engine,
            state_dir=state,
            cache_dir=cache,
            ferretdb_version=stack.ferretdb_version,
            host=host,
            port=stack.mongo_secure_port,
            postgres_url=self.postgres.url(SECURE_FERRETDB_DATABASE),
            timeout_s=timeout,
            auth=MongoAuth(self.secrets_dir / "mongo-password"),
        )
        self.kafka_sasl = KafkaSasl(stack.kafka_sasl_port, self.secrets_dir)
        self.kafka = Kafka(
            state_dir=state,
            cache_dir=cache,
            version=stack.kafka_version,
            host=host,
            port=stack.kafka_port,
            controller_port=stack.kafka_controller_port,
            heap=stack.kafka_heap,
            partitions=pipeline.kafka_topic_partitions,
            timeout_s=timeout,
            sasl=self.kafka_sasl if stack.secure else None,
        )
        self.smtp = SmtpSink(state, host, stack.smtp_port, timeout)
        self.crm = CrmDouble(state, host, stack.crm_port, timeout)

    @property
    def services(self) -> list:
        """What `up` starts, in start order; FerretDB needs PostgreSQL."""
        secure = [self.secure_mongo] if self.settings.secure else []
        return [self.postgres, self.mongo, *secure, self.kafka, self.smtp, self.crm]

    @property
    def all_services(self) -> list:
        """What `down` stops and `status` shows: also the secured server, when it runs."""
        if self.settings.secure or self.secure_mongo.daemon.pid() is not None:
            return [self.postgres, self.mongo, self.secure_mongo, self.kafka, self.smtp, self.crm]
        return self.services

    def install(self) -> None:
        """Download and build what the services need (cached; a no-op when warm)."""
        self.kafka.install()
        self.mongo.install()

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance of this stack (`deploy/dagster.yaml` on its PostgreSQL)."""
        return self.settings.state_dir / "dagster_home"

    def prepare_dagster_home(self) -> None:
        """The folder, with the production profile when this is a checkout (an installed
        package has no `deploy/`: Dagster's default instance, SQLite in the folder, serves)."""
        private_dir(self.dagster_home)
        profile = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"
        if profile.is_file():
            write_private(self.dagster_home / "dagster.yaml", profile.read_text())

    def up(self, report: Callable[[str, float], None] = lambda name, seconds: None) -> None:
        """Start every service not already running, then create the project's topics."""
        self.postgres.prepare_state_dir()
        restrict_tree(self.settings.state_dir)  # what an earlier version left open
        self.prepare_dagster_home()
        for service in self.services:
            started = time.monotonic()
            if service is self.secure_mongo and service.needs_postgres:
                self.postgres.ensure_database(SECURE_FERRETDB_DATABASE)
            service.up()
            report(service.name, time.monotonic() - started)
        started = time.monotonic()
        self.create_topics()
        report("topics", time.monotonic() - started)

    def create_topics(self) -> None:
        from enrollment_pipeline.lib.clients.kafka import (
            KafkaClient,
            KafkaConfig,
            KafkaUnavailableError,
        )

        with KafkaClient(KafkaConfig(bootstrap_servers=self.kafka.bootstrap_servers)) as kafka:
            try:
                kafka.ensure_topics(
                    [self.pipeline.enrollment_topic, self.pipeline.lead_topic],
                    partitions=self.pipeline.kafka_topic_partitions,
                )
            except KafkaUnavailableError as exc:
                raise ServiceError(f"kafka: creating topics failed: {exc}") from exc

    def down(self) -> list[str]:
        """Stop, in reverse order, exactly the processes this stack started."""
        return [service.name for service in reversed(self.all_services) if service.down()]

    def status(self) -> list[ServiceStatus]:
        kafka = self.kafka.bootstrap_servers
        if self.kafka.sasl_bootstrap_servers:
            kafka += f", SASL_SSL {self.kafka.sasl_bootstrap_servers}"
        addresses = {
            "postgres": self.postgres.url_base,
            "mongo": self.mongo.anonymous_uri,
            "secure-mongo": f"{self.secure_mongo.anonymous_uri} (user {AUTH_USER})",
            "kafka": kafka,
            "smtp": f"{self.smtp.host}:{self.smtp.port}",
            "crm": f"{self.crm.url} (test double)",
        }
        result = []
        for service in self.all_services:
            pid = service.daemon.pid()
            if isinstance(service, MongoWire):
                state = service.state()
            else:
                state = "running" if pid is not None else "stopped"
            result.append(
                ServiceStatus(
                    name=service.daemon.name,
                    state=state,
                    pid=pid,
                    address=addresses[service.name],
                    log_file=service.daemon.log_file,
                )
            )
        return result

    def env(self) -> dict[str, str]:
        """The Contract-6 variables for this stack, printed as `KEY=VALUE` lines by `stack env`.

        Paths are absolute, so `dagster dev` started in another folder (the demo's) finds them.
        """
        from enrollment_pipeline.lib.settings_errors import load_only
        from enrollment_pipeline.settings import (
            ArchiveSettings,
            EmailSettings,
            FollowupSettings,
            MongoSettings,
        )

        followup_fields = ("followup_max_emails", "followup_interval_minutes")
        mongo, sender, archive, followups = load_only(
            (MongoSettings, ("mongo_database",)),
            (EmailSettings, ("email_from",)),
            (ArchiveSettings, tuple(ArchiveSettings.model_fields)),
            (FollowupSettings, (*followup_fields, "followup_max_age_days")),
        )
        assert isinstance(mongo, MongoSettings) and isinstance(sender, EmailSettings)
        assert isinstance(archive, ArchiveSettings) and isinstance(followups, FollowupSettings)
        p = self.pipeline
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "ENROLLMENT_TOPIC": p.enrollment_topic,
            "LEAD_TOPIC": p.lead_topic,
            "MONGO_URI": self.mongo.uri,
            "MONGO_DATABASE": mongo.mongo_database,
            "EMAIL_BACKEND": "smtp",
            "SMTP_HOST": self.smtp.host,
            "SMTP_PORT": str(self.smtp.port),
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": sender.email_from,
            "AWS_REGION": archive.aws_region,
            "LEAD_API_URL": self.crm.url,
            "ARCHIVE_ROOT": archive.archive_root,  # absolute, or s3://
            "ARCHIVE_START_DATE": archive.archive_start_date.isoformat(),
            "FOLLOWUP_MAX_EMAILS": str(followups.followup_max_emails),
            "FOLLOWUP_INTERVAL_MINUTES": str(followups.followup_interval_minutes),
            "FOLLOWUP_MAX_AGE_DAYS": str(followups.followup_max_age_days),
            "DAGSTER_PG_URL": self.postgres.url("dagster"),
            # The instance `demo` runs in, so `status` and `offsets reset` see its runs.
            "DAGSTER_HOME": str(self.dagster_home.absolute()),
        }
        if archive.aws_endpoint_url:
            values["AWS_ENDPOINT_URL"] = archive.aws_endpoint_url
        # The CRM double speaks plain HTTP: a bearer token may go to it, on loopback only.
        if is_loopback(self.crm.host):
            values["LEAD_API_ALLOW_HTTP"] = "true"
        return values

    def secure_env(self) -> dict[str, str]:
        """`env()` pointed at the secured pieces: the SASL_SSL listener with its SCRAM user and
        CA, and the MongoDB-wire server that requires its user (`stack env --secure`)."""
        sasl = self.kafka_sasl
        if not sasl.ca_file.exists():
            raise ServiceError(
                "the secured services were never started: run "
                "`STACK_SECURE=true enrollment-pipeline stack up` first"
            )
        return {
            **self.env(),
            "KAFKA_BOOTSTRAP_SERVERS": f"{self.settings.host}:{sasl.port}",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": SASL_MECHANISM,
            "KAFKA_SASL_USERNAME": SASL_USER,
            "KAFKA_SASL_PASSWORD": sasl.password,
            "KAFKA_SSL_CAFILE": str(sasl.ca_file),
            "MONGO_URI": self.secure_mongo.uri,
        }
