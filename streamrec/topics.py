"""Kafka topic administration for any broker: create streamrec's topics, count their messages."""

from __future__ import annotations

import time
import uuid

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
    admin = _admin(bootstrap)  # keep a reference: a collected AdminClient cancels its futures
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.info("topic created", extra={"topic": name})
    return [topic.topic for topic in new]


class MessageCounter:
    """Counts the messages of a topic by reading it from the beginning, incrementally.

    Reading is the one count every broker gets right: Tansu's ListOffsets (what watermark queries
    use) reports the last batch's base offset + 1 instead of the log end.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"streamrec-counter-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.count = 0

    def update(self, timeout: float = 0.2) -> int:
        """Read what arrived since the last call; return the total count."""
        while batch := self._consumer.consume(10_000, timeout):
            self.count += sum(1 for message in batch if message.error() is None)
        return self.count

    def close(self) -> None:
        """Release the consumer."""
        self._consumer.close()
