"""Which Kafka partition an application's events are on, and which lane serves a partition.

Producers key enrollment events by application id (Contract 1), and Kafka's default
partitioner (the Java client's, kafka-python's, librdkafka's `murmur2_random`) puts a key on
`toPositive(murmur2(key)) % partitions`. So an application's events are all on one partition,
and a writer of one partition's applications (an ingestion run, a backfill shard) touches no
other partition's: per-partition leases and runs over disjoint partitions never overlap.

Lanes group partitions for parallel runs: partition p is in lane `p % lanes`, a stable
assignment, so Dagster limits each lane to one run by a run tag.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit
    value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` among `partitions`."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_of(application_id: str, partitions: int) -> int:
    """The partition of an application's events (its id, UTF-8, is the record key)."""
    return partition_of_key(application_id.encode("utf-8", "surrogatepass"), partitions)


def lane_of(partition: int, lanes: int) -> int:
    """The lane (of INGEST_PARALLEL_RUNS) that serves `partition`."""
    return partition % max(1, lanes)
