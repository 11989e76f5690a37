"""Apache Kafka 4.x, single-node KRaft, from Maven Central artifacts (no tarball, no Docker).

With `sasl` (STACK_SECURE), the broker has a second listener, SASL_SSL on its own port
(SCRAM-SHA-512, a certificate from the stack's private CA), beside the PLAINTEXT one that
everything else uses; the SCRAM user is created through the PLAINTEXT listener at each start.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from enrollment_pipeline.stack.process import (
    PRIVATE_UMASK,
    Daemon,
    ServiceError,
    port_open,
    private_dir,
    run_checked,
    stored_secret,
)

SASL_MECHANISM = "SCRAM-SHA-512"
SASL_USER = "enrollment"

# kafka_2.13 4.x brings slf4j-api 1.7 and log4j-core 2.24 but no binding: log4j-slf4j-impl
# (the binding for slf4j 1.x) sends the broker's logging to log4j2, and so to our log file.
LOG4J2_VERSION = "2.24.3"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.enrollment-pipeline</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka_version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j_version}</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
  </Loggers>
</Configuration>
"""

_SERVER_PROPERTIES = """# Written by `enrollment-pipeline stack up`; single-node KRaft on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller_port}
listeners={listeners},CONTROLLER://{host}:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{protocols}
log.dirs={data_dir}
num.partitions={partitions}
default.replication.factor=1
min.insync.replicas=1
num.network.threads=2
num.io.threads=4
# The project creates its topics with their partition counts; a typo must not create one.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
"""

_SASL_SSL_PROPERTIES = """
# STACK_SECURE: a SASL_SSL listener with SCRAM-SHA-512 users, TLS from the stack's private CA.
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.client.auth=none
"""


@dataclass(frozen=True)
class KafkaSasl:
    """The SASL_SSL listener: its port and where its secrets are kept."""

    port: int
    secrets_dir: Path

    @property
    def password_file(self) -> Path:
        return self.secrets_dir / "kafka-sasl-password"

    @property
    def ca_file(self) -> Path:
        return self.secrets_dir / "kafka-ca.pem"

    @property
    def keystore(self) -> Path:
        return self.secrets_dir / "kafka-broker.pem"

    @property
    def password(self) -> str:
        return stored_secret(self.password_file)


class Kafka:
    """The broker: jars cached by version, storage formatted once, data kept between `up`s."""

    name = "kafka"

    def __init__(
        self,
        *,
        state_dir: Path,
        cache_dir: Path,
        version: str,
        host: str,
        port: int,
        controller_port: int,
        heap: str,
        partitions: int,
        timeout_s: float,
        sasl: KafkaSasl | None = None,
    ) -> None:
        self.version = version
        self.sasl = sasl
        self.libs = cache_dir / f"kafka-{version}" / "libs"
        self.m2 = cache_dir / "m2"
        self.dir = state_dir / "kafka"
        self.data = self.dir / "data"
        self.host, self.port, self.controller_port = host, port, controller_port
        self.heap, self.partitions, self.timeout_s = heap, partitions, timeout_s
        self.daemon = Daemon(
            name="kafka",
            pid_file=state_dir / "run" / "kafka.pid",
            log_file=state_dir / "logs" / "kafka.log",
            marker=str(self.dir / "server.properties"),
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        return f"{self.host}:{self.sasl.port}" if self.sasl else None

    def _properties(self) -> str:
        listeners = [f"PLAINTEXT://{self.host}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT"]
        if self.sasl:
            listeners.append(f"SASL_SSL://{self.host}:{self.sasl.port}")
            protocols.append("SASL_SSL:SASL_SSL")
        text = _SERVER_PROPERTIES.format(
            host=self.host,
            listeners=",".join(listeners),
            protocols=",".join(protocols),
            controller_port=self.controller_port,
            data_dir=self.data,
            partitions=self.partitions,
        )
        if self.sasl:
            text += _SASL_SSL_PROPERTIES.format(keystore=self.sasl.keystore)
        return text

    def install(self) -> None:
        """Copy kafka_2.13 and its runtime dependencies with Maven, once per version."""
        if self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise ServiceError("kafka: Maven (`mvn`) is needed to fetch the Kafka jars")
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.libs.parent) as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_POM.format(kafka_version=self.version, log4j_version=LOG4J2_VERSION))
            staged = Path(work) / "libs"
            run_checked(
                "kafka download (Maven)",
                [
                    "mvn",
                    "-B",
                    "-q",
                    "-f",
                    str(pom),
                    f"-Dmaven.repo.local={self.m2}",
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staged}",
                ],
                log_file=self.daemon.log_file.with_name("kafka-install.log"),
                timeout_s=1200,
            )
            staged.rename(self.libs)  # only a complete download counts as cached

    def _java(self, *args: str) -> list[str]:
        return ["java", "-cp", f"{self.libs}/*", *args]

    def up(self) -> None:
        if self.sasl and self.daemon.pid() is not None and not self._sasl_configured():
            # Started without STACK_SECURE: its listeners are fixed at start.
            self.daemon.log("restarting kafka to add its SASL_SSL listener (STACK_SECURE)")
            self.daemon.stop(timeout_s=60)
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_KAFKA_PORT",
            timeout_s=self.timeout_s,
        ):
            if self.sasl:
                self._ensure_sasl_user()
            return
        self.install()
        private_dir(self.dir)
        if self.sasl:
            self._ensure_certificate()
            if port_open(self.host, self.sasl.port):
                raise ServiceError(
                    f"kafka: port {self.host}:{self.sasl.port} is taken by another process; "
                    "set STACK_KAFKA_SASL_PORT to a free port"
                )
        properties = self.dir / "server.properties"
        properties.write_text(self._properties())
        log4j = self.dir / "log4j2.xml"
        log4j.write_text(_LOG4J2)
        if not (self.data / "meta.properties").exists():
            self._format(properties)
        proc = self.daemon.start(
            [
                "java",
                "-Xms256m",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(properties),
            ]
        )
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)
        if self.sasl:
            self._ensure_sasl_user()

    def _sasl_configured(self) -> bool:
        try:
            return "SASL_SSL://" in (self.dir / "server.properties").read_text()
        except FileNotFoundError:
            return False

    def _ensure_certificate(self) -> None:
        from enrollment_pipeline.stack import tls

        assert self.sasl is not None
        if not tls.is_current(self.sasl.ca_file, self.sasl.keystore, self.host):
            tls.make_broker_certificate(self.sasl.ca_file, self.sasl.keystore, self.host)

    def _ensure_sasl_user(self) -> None:
        """Create (or update) the SCRAM user with the kept password, over PLAINTEXT; then wait
        until the SASL_SSL listener takes it (the credential travels through the metadata log)."""
        from kafka import KafkaAdminClient
        from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

        assert self.sasl is not None
        password = self.sasl.password
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=10_000,
            bootstrap_timeout_ms=10_000,
        )
        try:
            upsert = UserScramCredentialUpsertion(SASL_USER, ScramMechanism.SCRAM_SHA_512, password)
            errors = admin.alter_user_scram_credentials([upsert])
        finally:
            admin.close()
        if errors.get(SASL_USER):
            raise ServiceError(f"kafka: creating the SCRAM user failed: {errors[SASL_USER]}")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._sasl_admin_probe(password)
                return
            except Exception as exc:  # not yet: the credential or the listener is coming
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"kafka: the SASL_SSL listener on {self.sasl_bootstrap_servers} did not "
                        f"take the SCRAM user ({type(exc).__name__}); see {self.daemon.log_file}"
                    ) from exc
                time.sleep(0.5)

    def _sasl_admin_probe(self, password: str) -> None:
        from kafka import KafkaAdminClient

        assert self.sasl is not None
        admin = KafkaAdminClient(
            bootstrap_servers=self.sasl_bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism=SASL_MECHANISM,
            sasl_plain_username=SASL_USER,
            sasl_plain_password=password,
            ssl_cafile=str(self.sasl.ca_file),
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
        )
        try:
            admin.list_topics()
        finally:
            admin.close()

    def _format(self, properties: Path) -> None:
        cluster_id = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if cluster_id.returncode != 0:
            raise ServiceError(
                f"kafka: StorageTool random-uuid failed: {cluster_id.stderr[-2000:]}"
            )
        run_checked(
            "kafka storage format",
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id.stdout.strip().splitlines()[-1],
                "-c",
                str(properties),
                "--standalone",
            ),
            log_file=self.daemon.log_file,
            timeout_s=120,
            umask=PRIVATE_UMASK,
        )

    def is_ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def down(self) -> bool:
        return self.daemon.stop(timeout_s=60)
