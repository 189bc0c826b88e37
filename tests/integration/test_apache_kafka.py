"""Apache Kafka itself (streamrec.kafka_cluster): one KRaft node, and three that lose a leader.

- **One node.** Start, produce and consume with confluent_kafka, stop: no process of it is left.
- **Three nodes.** A topic at replication factor 3 with ``min.insync.replicas=2``; an ``acks=all``
  produce; SIGKILL of partition 0's leader; once another node leads, ``acks=all`` produces still
  succeed (two in-sync replicas remain); the killed node restarts from its own log dir and rejoins
  the ISR; every acknowledged record is there.

Needs the jars of ``scripts/fetch-kafka`` (run by ``scripts/bootstrap``) and Java 17+; skipped
without them. About 45 s on 2 cores (JVM start-ups, and a killed broker is fenced only after its
9 s session timeout).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from streamrec.kafka_cluster import ApacheKafka
from streamrec.processes import StackError

from support import require_apache_kafka, wait_for

pytestmark = pytest.mark.integration

REPLICATED = "replicated"


@pytest.fixture(autouse=True)
def _kafka_fetched() -> None:
    require_apache_kafka()


def _running(pid: int) -> bool:
    """True while ``pid`` is a live process running Kafka (not a zombie, not a reused PID)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    zombie = any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())
    return not zombie and b"kafka" in cmdline


@pytest.fixture
def cluster_factory() -> Iterator[list[ApacheKafka]]:
    """Clusters a test starts; each is stopped at the end even if the test failed."""
    clusters: list[ApacheKafka] = []
    yield clusters
    for cluster in clusters:
        cluster.stop()


def _produce(
    bootstrap: str, topic: str, values: list[bytes], partition: int = 0, timeout: float = 60
) -> None:
    """Produce with ``acks=all`` and fail unless every record is acknowledged."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout * 1000),
            "logger": logging.getLogger("test.producer"),
        }
    )
    errors: list[object] = []
    for value in values:
        producer.produce(topic, value, partition=partition, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(timeout + 10) == 0, "records still unacknowledged"
    assert errors == [None] * len(values), errors


def _read_all(bootstrap: str, topic: str, partition: int, count: int, timeout: float = 60) -> list[bytes]:
    """The first ``count`` values of one partition, read from the beginning."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "logger": logging.getLogger("test.consumer"),
        }
    )
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])

        def read() -> bool:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    values.append(message.value() or b"")
            return len(values) >= count

        wait_for(read, timeout, f"{count} records of {topic}[{partition}]", interval=0)
    finally:
        consumer.close()
    return values


def _leader(kafka: ApacheKafka, topic: str, partition: int) -> int | None:
    try:
        return kafka.leader_of(topic, partition)
    except (KafkaException, StackError):  # metadata unavailable for a moment during the election
        return None


def _isr(kafka: ApacheKafka, topic: str, partition: int) -> list[int]:
    try:
        return kafka.in_sync_replicas(topic, partition)
    except (KafkaException, StackError):
        return []


def test_one_node_produces_consumes_and_stops(tmp_path: Path, cluster_factory: list[ApacheKafka]) -> None:
    kafka = ApacheKafka(tmp_path / "kafka", nodes=1)
    cluster_factory.append(kafka)
    kafka.start()
    assert kafka.brokers() == {0}
    pids = list(kafka.pids().values())
    assert len(pids) == 1 and _running(pids[0])

    kafka.admin().create_topics([NewTopic("single", num_partitions=1, replication_factor=1)])[
        "single"
    ].result(30)
    values = [f"record-{i}".encode() for i in range(20)]
    _produce(kafka.bootstrap, "single", values)
    assert _read_all(kafka.bootstrap, "single", 0, len(values)) == values

    kafka.stop()
    assert not any(_running(pid) for pid in pids), "a Kafka process outlived stop()"


def test_three_nodes_keep_acks_all_through_a_leader_kill(
    tmp_path: Path, cluster_factory: list[ApacheKafka]
) -> None:
    kafka = ApacheKafka(tmp_path / "kafka", nodes=3)
    cluster_factory.append(kafka)
    kafka.start()
    assert kafka.brokers() == {0, 1, 2}
    pids = list(kafka.pids().values())

    topic = NewTopic(REPLICATED, num_partitions=2, replication_factor=3, config={"min.insync.replicas": "2"})
    kafka.admin().create_topics([topic])[REPLICATED].result(30)
    wait_for(lambda: len(_isr(kafka, REPLICATED, 0)) == 3, 60, "partition 0 with 3 in-sync replicas")
    _produce(kafka.bootstrap, REPLICATED, [b"before"])

    wait_for(lambda: _leader(kafka, REPLICATED, 0) is not None, 30, "a leader of partition 0")
    leader = _leader(kafka, REPLICATED, 0)
    assert leader is not None
    kafka.kill(leader)
    assert not _running(kafka.pids()[leader])
    wait_for(
        lambda: _leader(kafka, REPLICATED, 0) not in (None, leader),
        60,
        f"a new leader (not {leader}) of partition 0",
    )
    _produce(kafka.bootstrap, REPLICATED, [b"during"])  # two in-sync replicas: min.insync.replicas holds
    assert leader not in _isr(kafka, REPLICATED, 0)

    kafka.restart(leader)
    assert _running(kafka.pids()[leader])
    wait_for(lambda: _isr(kafka, REPLICATED, 0) == [0, 1, 2], 120, f"node {leader} back in partition 0's ISR")
    _produce(kafka.bootstrap, REPLICATED, [b"after"])
    assert _read_all(kafka.bootstrap, REPLICATED, 0, 3) == [b"before", b"during", b"after"]

    pids = [*pids, kafka.pids()[leader]]
    kafka.stop()
    assert not any(_running(pid) for pid in pids), "a Kafka process outlived stop()"
