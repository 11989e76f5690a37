"""The Kafka client (kafka-python): topics, end offsets, exact-range reads, batch produce,
group offsets.

Delivery guarantee: `produce_batch` returns only when every record is acknowledged by all
in-sync replicas (each send's future is checked; `flush()` alone does not raise), so callers
may commit offsets after it. `read_range` reads exactly `[start, end)` with assign/seek, no
group membership, so a run never triggers a rebalance.

Security settings are checked before any connection: an incomplete set (SASL without a user,
a CA file that is not there) is one `KafkaConfigError` naming the variables, at once. With TLS
or SASL, the first connection of a client is watched, so a certificate the CA does not trust
or a refused login is one `KafkaAuthenticationError` naming the setting (never the secret),
at once, rather than a bootstrap timeout.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    RetriableError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from enrollment_pipeline.settings import KafkaSettings

# Group coordinators answer "not available" until `__consumer_offsets` exists (it is created
# on first use) or while it loads after a restart: such admin calls are retried briefly.
_retry_coordinator = retry(
    retry=retry_if_exception_type(RetriableError),
    stop=stop_after_delay(20),
    wait=wait_fixed(0.5),
    reraise=True,
)


class KafkaUnavailableError(RuntimeError):
    """The cluster did not answer; the message names the setting to check."""


class KafkaConfigError(ValueError):
    """The KAFKA_* security settings are incomplete or contradict each other; the message
    names the variables."""


class KafkaAuthenticationError(KafkaUnavailableError):
    """The cluster answered but refused the TLS handshake or the login; the message names the
    setting to check, never its value."""


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# The mechanisms a user name and password configure (KAFKA_SASL_USERNAME/PASSWORD).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class OffsetOutOfRangeError(RuntimeError):
    """A requested range starts below the log start offset: records were deleted unread."""


@dataclass(frozen=True)
class Record:
    """One Kafka record as read, bytes untouched (parsing happens in the domain)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(frozen=True)
class KafkaConfig:
    """How to reach one Kafka cluster (the KAFKA_* variables of Contract 6)."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    client_id: str = "enrollment-pipeline"
    request_timeout_ms: int = 15_000
    # An unreachable cluster must fail a run in seconds, not hang it.
    bootstrap_timeout_ms: int = 10_000
    max_block_ms: int = 10_000

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaConfig:
        """The one mapping from the environment's variables to a client's configuration."""
        password = settings.kafka_sasl_password
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password else None,
            ssl_cafile=settings.kafka_ssl_cafile,
        )

    def problems(self) -> list[str]:
        """What is missing or contradictory in the security settings, by variable name."""
        protocol = self.security_protocol
        if protocol not in PROTOCOLS:
            return [f"KAFKA_SECURITY_PROTOCOL={protocol} is not one of {', '.join(PROTOCOLS)}"]
        found = []
        given = {
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.sasl_username,
            "KAFKA_SASL_PASSWORD": self.sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in given.items() if not value]
            if missing:
                found.append(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
            if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
                found.append(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism} is not one of "
                    f"{', '.join(SASL_MECHANISMS)}"
                )
        else:
            unused = [name for name, value in given.items() if value]
            if unused:
                found.append(
                    f"{' and '.join(unused)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not "
                    "log in (SASL_SSL or SASL_PLAINTEXT does)"
                )
        if self.ssl_cafile:
            if not protocol.endswith("SSL"):
                found.append(
                    f"KAFKA_SSL_CAFILE set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                    "TLS (SSL or SASL_SSL does)"
                )
            elif not os.path.isfile(self.ssl_cafile):
                found.append(f"KAFKA_SSL_CAFILE={self.ssl_cafile} is not a file")
            elif not os.access(self.ssl_cafile, os.R_OK):
                found.append(f"KAFKA_SSL_CAFILE={self.ssl_cafile} cannot be read")
        return found

    def check(self) -> None:
        """Raise `KafkaConfigError` naming every problem of `problems()`, before connecting."""
        found = self.problems()
        if found:
            raise KafkaConfigError(
                f"Kafka settings for {self.bootstrap_servers} are incomplete: " + "; ".join(found)
            )


class KafkaClient:
    """Topics, end offsets, exact-range reads, batch produce and group offsets of one cluster.

    The admin client, a metadata consumer and the producer are made on first use and kept
    (connections and metadata are costly to set up); `close()` closes them.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._admin_client: KafkaAdminClient | None = None
        self._metadata_consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._login_checked = False

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaClient:
        return cls(KafkaConfig.from_settings(settings))

    @property
    def bootstrap_servers(self) -> str:
        return self.config.bootstrap_servers

    def __enter__(self) -> KafkaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for client in (self._admin_client, self._metadata_consumer):
            if client is not None:
                client.close()
        if self._producer is not None:
            self._producer.close(timeout=5)
        self._admin_client = self._metadata_consumer = self._producer = None

    def _common(self) -> dict[str, Any]:
        """The connection settings of every kafka-python client, checked first."""
        c = self.config
        c.check()
        config: dict[str, Any] = {
            "bootstrap_servers": c.bootstrap_servers.split(","),
            "security_protocol": c.security_protocol,
            "client_id": c.client_id,
            "request_timeout_ms": c.request_timeout_ms,
            "bootstrap_timeout_ms": c.bootstrap_timeout_ms,
        }
        if c.sasl_mechanism:
            config.update(
                sasl_mechanism=c.sasl_mechanism,
                sasl_plain_username=c.sasl_username,
                sasl_plain_password=c.sasl_password,
            )
        if c.ssl_cafile:
            config["ssl_cafile"] = c.ssl_cafile
        if c.security_protocol != "PLAINTEXT" and not self._login_checked:
            if c.security_protocol.endswith("SSL"):
                self._check_tls()
            if c.security_protocol.startswith("SASL_"):
                self._check_login(config)
            self._login_checked = True
        return config

    def _check_tls(self) -> None:
        """One TLS handshake with the first broker that answers, verified as kafka-python
        verifies it: an untrusted certificate or a port without TLS is named at once."""
        c = self.config
        context = ssl.create_default_context(cafile=c.ssl_cafile)
        timeout_s = c.bootstrap_timeout_ms / 1000
        for server in c.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            host = host.strip("[]")
            try:
                with (
                    socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
                    context.wrap_socket(raw, server_hostname=host),
                ):
                    return
            except ssl.SSLCertVerificationError as exc:
                raise KafkaAuthenticationError(
                    f"Kafka at {c.bootstrap_servers}: the broker's certificate is not trusted "
                    f"({exc.verify_message}); check KAFKA_SSL_CAFILE (a PEM bundle of the CA "
                    "that signed it) and that KAFKA_BOOTSTRAP_SERVERS names the host it is for"
                ) from None
            except ssl.SSLError as exc:
                raise KafkaAuthenticationError(
                    f"Kafka at {c.bootstrap_servers} did not complete a TLS handshake "
                    f"({exc.reason or type(exc).__name__}); check KAFKA_SECURITY_PROTOCOL "
                    "(is this a PLAINTEXT listener?) and KAFKA_BOOTSTRAP_SERVERS"
                ) from None
            except (OSError, ValueError):
                continue  # unreachable: the client's own attempt reports it

    def _check_login(self, config: dict[str, Any]) -> None:
        """Open one connection to a bootstrap broker and await its SASL login: a refusal fails
        at once, naming the settings.

        kafka-python retries a refused login until its bootstrap timeout and then reports only
        a timeout, so the first connection is made here with its connection manager. Should
        that internal API change, the check is skipped (the client then fails by timeout).
        """
        from kafka.errors import SaslAuthenticationFailedError
        from kafka.net.compat import KafkaNetClient

        c = self.config
        client = KafkaNetClient(**config)
        deadline = time.monotonic() + c.bootstrap_timeout_ms / 1000
        try:
            manager = client._manager
            client._net.start()
            broker = manager.cluster.bootstrap_brokers()[0]

            async def login() -> None:
                connection = manager.get_connection(
                    broker.node_id,
                    timeout_ms=max(0.0, deadline - time.monotonic()) * 1000,
                    pop_on_close=False,
                    refresh_metadata_on_err=False,
                    reset_backoff_on_connect=False,
                )
                try:
                    await connection
                except Exception as exc:
                    manager._conns.pop(broker.node_id, connection).close(exc)  # as bootstrap does
                    raise

            failure: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    manager.run(login)
                    return
                except SaslAuthenticationFailedError:
                    raise KafkaAuthenticationError(
                        f"Kafka at {c.bootstrap_servers} refused the login of "
                        f"KAFKA_SASL_USERNAME={c.sasl_username} ({c.sasl_mechanism}); check "
                        "KAFKA_SASL_PASSWORD, KAFKA_SASL_USERNAME and KAFKA_SASL_MECHANISM"
                    ) from None
                except (KafkaError, OSError) as exc:
                    failure = exc  # not there, or the connection broke before the answer
                    time.sleep(0.2)
            if failure is not None:
                raise self._unavailable(failure)
        except (AttributeError, TypeError, IndexError):
            return  # kafka-python's internals moved: no early check
        finally:
            client.close()
            client._net.stop()

    def _unavailable(self, exc: Exception) -> KafkaUnavailableError:
        """One line: how long it waited (a cluster that never answers costs the whole
        bootstrap timeout), why, and the settings to check."""
        reason = " ".join(str(exc).split())
        if not reason.startswith(type(exc).__name__):  # kafka-python's messages start with it
            reason = f"{type(exc).__name__}: {reason}"
        waited = ""
        if isinstance(exc, KafkaTimeoutError):
            waited = f" within {self.config.bootstrap_timeout_ms / 1000:g} s"
        return KafkaUnavailableError(
            f"Kafka at {self.bootstrap_servers} did not answer{waited} ({reason}); "
            "check KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL"
        )

    @contextmanager
    def admin(self) -> Iterator[KafkaAdminClient]:
        """The admin client (kept for the run)."""
        if self._admin_client is None:
            try:
                self._admin_client = KafkaAdminClient(**self._common())
            except (KafkaError, OSError) as exc:
                raise self._unavailable(exc) from exc
        yield self._admin_client

    def _metadata(self) -> KafkaConsumer:
        """A consumer without assignment, for partitions and offsets (kept for the run)."""
        if self._metadata_consumer is None:
            self._metadata_consumer = self._consumer()
        return self._metadata_consumer

    def _consumer(self) -> KafkaConsumer:
        try:
            return KafkaConsumer(
                **self._common(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
        except (KafkaError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def ensure_topics(self, topics: Iterable[str], *, partitions: int) -> None:
        """Create the topics that do not exist yet, with `partitions` partitions each."""
        with self.admin() as admin:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if not missing:
                return
            try:
                admin.create_topics(
                    {t: {"num_partitions": partitions, "replication_factor": 1} for t in missing},
                    wait_for_metadata=True,
                )
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile

    def delete_topics(self, topics: Sequence[str]) -> None:
        with self.admin() as admin:
            admin.delete_topics(list(topics))

    def partitions(self, topic: str) -> list[int]:
        found = self._metadata().partitions_for_topic(topic)
        if not found:
            raise KafkaUnavailableError(
                f"topic {topic!r} does not exist on {self.bootstrap_servers}; "
                "create it (enrollment-pipeline stack up does) or check ENROLLMENT_TOPIC/LEAD_TOPIC"
            )
        return sorted(found)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written, per partition (no group join)."""
        tps = [TopicPartition(topic, p) for p in self.partitions(topic)]
        return {tp.partition: off for tp, off in self._metadata().end_offsets(tps).items()}

    def beginning_offsets(self, topic: str) -> dict[int, int]:
        """The first offset still retained, per partition."""
        tps = [TopicPartition(topic, p) for p in self.partitions(topic)]
        return {tp.partition: off for tp, off in self._metadata().beginning_offsets(tps).items()}

    def offsets_at(self, topic: str, when_ms: int, partitions: Sequence[int]) -> dict[int, int]:
        """The first offset at or after a timestamp per partition (the end when none)."""
        consumer = self._metadata()
        tps = [TopicPartition(topic, p) for p in partitions]
        found = consumer.offsets_for_times({tp: when_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        return {tp.partition: at.offset if at is not None else ends[tp] for tp, at in found.items()}

    def wait_for_records(
        self,
        topic: str,
        after: Mapping[int, int],
        *,
        timeout_s: float,
        or_until: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Whether, within `timeout_s`, a record at or past `after` (per partition) was written
        or `or_until()` became true (it is asked every quarter of a second).

        The broker answers a fetch as soon as a record is written, so this returns within
        milliseconds of the produce; False at the deadline. Kafka failing meanwhile is a
        `KafkaUnavailableError`.
        """
        deadline = time.monotonic() + timeout_s
        consumer = self._consumer() if after else None
        try:
            if consumer is not None:
                tps = {p: TopicPartition(topic, p) for p in after}
                consumer.assign(list(tps.values()))
                for p, offset in after.items():
                    consumer.seek(tps[p], offset)
            while (left := deadline - time.monotonic()) > 0:
                step = min(left, 0.25)
                if consumer is None:
                    time.sleep(step)
                elif consumer.poll(timeout_ms=max(1, int(step * 1000)), max_records=1):
                    return True
                if or_until():
                    return True
            return False
        except (KafkaError, OSError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            if consumer is not None:
                consumer.close()

    def read_range(
        self, topic: str, ranges: Mapping[int, tuple[int, int]], *, timeout_s: float = 60.0
    ) -> list[Record]:
        """Every record of `[start, end)` for each partition, in offset order per partition.

        Stops a partition when its position reaches `end` (compaction or transaction markers
        may hide `end - 1`). Fails if a start is below the log start offset, or at the deadline.
        """
        wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
        if not wanted:
            return []
        consumer = self._consumer()
        try:
            tps = {p: TopicPartition(topic, p) for p in wanted}
            consumer.assign(list(tps.values()))
            beginnings = consumer.beginning_offsets(list(tps.values()))
            for p, (start, _end) in wanted.items():
                if start < beginnings[tps[p]]:
                    raise OffsetOutOfRangeError(
                        f"{topic}[{p}] starts at {beginnings[tps[p]]} but the range starts at "
                        f"{start}: records were deleted before they were read"
                    )
                consumer.seek(tps[p], start)
            records: list[Record] = []
            pending = set(wanted)
            deadline = time.monotonic() + timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {topic} ranges {dict(wanted)} did not finish in {timeout_s} s; "
                        f"partitions left: {sorted(pending)}"
                    )
                batch = consumer.poll(timeout_ms=500, max_records=10_000)
                for tp, messages in batch.items():
                    end = wanted[tp.partition][1]
                    for m in messages:
                        if m.offset < end:
                            records.append(
                                Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                            )
                for p in list(pending):
                    if consumer.position(tps[p]) >= wanted[p][1]:
                        pending.discard(p)
                        consumer.pause(tps[p])
            return records
        finally:
            consumer.close()

    def produce_batch(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> int:
        """Send (key, value) pairs with acks=all, one flush, every future checked."""
        if not messages:
            return 0
        if self._producer is None:
            try:
                self._producer = KafkaProducer(
                    **self._common(),
                    acks="all",
                    linger_ms=5,
                    max_block_ms=self.config.max_block_ms,
                    retries=5,
                )
            except (KafkaError, OSError) as exc:
                raise self._unavailable(exc) from exc
        producer = self._producer
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(timeout=self.config.request_timeout_ms / 1000 * 2)
        for future in futures:
            future.get(timeout=self.config.request_timeout_ms / 1000)  # raises the send's error
        return len(futures)

    @_retry_coordinator
    def commit_group_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit `offsets` (next offset to read, per partition) for `group`; errors raise."""
        if not offsets:
            return
        with self.admin() as admin:
            result = admin.alter_group_offsets(
                group,
                {
                    TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                },
            )
        failed = {tp: err for tp, err in result.items() if err is not None and err.errno != 0}
        if any(issubclass(err, RetriableError) for err in failed.values()):
            raise next(err for err in failed.values() if issubclass(err, RetriableError))()
        if failed:
            raise KafkaError(f"committing offsets of group {group!r} failed: {failed}")

    @_retry_coordinator
    def group_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """Committed offsets of a consumer group, as {(topic, partition): offset}."""
        with self.admin() as admin:
            found = admin.list_group_offsets({group: None}).get(group, {})
        return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
