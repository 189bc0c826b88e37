"""Kafka topic administration for any broker: create streamrec's topics, count their messages."""

from __future__ import annotations

import time

from .shared.contracts import topic_specs
from .shared.logs import get_logger
from .shared.settings import ConfigError, Settings

log = get_logger(__name__)


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached; the message names it."""


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def existing_topics(bootstrap: str, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count; raises KafkaUnavailable when the broker does not answer."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    while True:
        try:
            metadata = admin.list_topics(timeout=min(5.0, timeout))
            return {name: len(topic.partitions) for name, topic in metadata.topics.items()}
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka at {bootstrap} is unreachable ({exc.args[0].str()}): "
                    "check STREAMREC_KAFKA_BOOTSTRAP and that the broker runs"
                ) from None
            time.sleep(0.5)


def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create streamrec's topics that do not exist yet (existing ones are left as they are)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        raise ConfigError("STREAMREC_KAFKA_BOOTSTRAP is not set: point it at your Kafka")
    existing = existing_topics(bootstrap, timeout)
    new = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=settings.replication_factor)
        for spec in topic_specs(settings)
        if spec.name not in existing
    ]
    if not new:
        return []
    for name, future in _admin(bootstrap).create_topics(new, operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.info("topic created", extra={"topic": name})
    return [topic.topic for topic in new]


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages ever written to ``topic``: the sum of its partitions' high watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "streamrec-admin", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        consumer.close()
