"""Apache Kafka 4.x, single-node KRaft, from Maven Central artifacts (no tarball, no Docker)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from enrollment_pipeline.stack.process import Daemon, ServiceError, port_open, run_checked

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
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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
    ) -> None:
        self.version = version
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
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_KAFKA_PORT",
            timeout_s=self.timeout_s,
        ):
            return
        self.install()
        self.dir.mkdir(parents=True, exist_ok=True)
        properties = self.dir / "server.properties"
        properties.write_text(
            _SERVER_PROPERTIES.format(
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                data_dir=self.data,
                partitions=self.partitions,
            )
        )
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
