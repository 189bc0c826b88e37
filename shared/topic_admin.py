"""Kafka topic administration for any broker: create streamrec's topics, count their messages.

Used by the CLI and the dev stack (creating the topics), the publisher, and the services: ingest
and the trainer check their Kafka login at start, the scorer reads the partition counts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from streamrec.shared.kafka_config import client_config, require_bootstrap
from streamrec.shared.kafka_topics import topic_specs
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import feature_batch_event_count
from streamrec.shared.settings import Settings

log = get_logger(__name__)


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached; the message names it."""


class KafkaRefused(KafkaUnavailable):
    """The broker was reached but refused the client: SASL login or TLS handshake failed."""


def _admin(settings: Settings, on_error: Callable[[Any], None] | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(settings, {"error_cb": on_error} if on_error else None))


# librdkafka retries these forever; they will not heal by waiting, so report them at once.
_FATAL_CONNECT_ERRORS = ("_AUTHENTICATION", "_SSL")


def existing_topics(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count; raises KafkaUnavailable when the broker does not answer.

    A failed SASL authentication or TLS handshake is raised as KafkaRefused as soon as the client
    reports it, with its reason, rather than after ``timeout`` as a bare "transport failure".
    """
    from confluent_kafka import KafkaException

    bootstrap = require_bootstrap(settings)
    deadline = time.monotonic() + timeout
    errors: list[Any] = []
    admin = _admin(settings, errors.append)
    while True:
        try:
            metadata = admin.list_topics(timeout=min(2.0, timeout))
            return {name: len(topic.partitions) for name, topic in metadata.topics.items()}
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: the reason behind a bare "transport failure"
            fatal = [error for error in errors if error.name() in _FATAL_CONNECT_ERRORS]
            if fatal:
                problem: KafkaUnavailable = KafkaRefused(
                    f"Kafka at {bootstrap} refused the connection ({fatal[-1].str()}): check the "
                    "STREAMREC_KAFKA_SECURITY_PROTOCOL, _SASL_* and _SSL_* settings"
                )
                break
            if time.monotonic() > deadline:
                problem = KafkaUnavailable(
                    f"Kafka at {bootstrap} is unreachable ({exc.args[0].str()}): "
                    "check STREAMREC_KAFKA_BOOTSTRAP and that the broker runs"
                )
                break
            time.sleep(0.5)
    del admin  # stop its retries now, not when the exception's frames are collected
    raise problem


def check_login(settings: Settings, timeout: float = 10.0) -> None:
    """Raise KafkaRefused if the broker refuses the configured SASL login or TLS handshake.

    For services whose own client reports that poorly (aiokafka, under Faust, fails a refused SCRAM
    login with a bare ``KeyError``). An unreachable broker is not an error here: the service's
    client keeps retrying it as usual.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    try:
        existing_topics(settings, timeout)
    except KafkaRefused:
        raise
    except KafkaUnavailable:
        pass


def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create streamrec's topics that do not exist yet (existing ones are left as they are)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    existing = existing_topics(settings, timeout)
    new = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=settings.replication_factor)
        for spec in topic_specs(settings)
        if spec.name not in existing
    ]
    if not new:
        return []
    admin = _admin(settings)  # keep a reference: a collected AdminClient cancels its futures
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

    def __init__(self, settings: Settings, topic: str, weight: Callable[[bytes], int] | None = None) -> None:
        """Count ``topic``'s messages, or with ``weight``, the sum of ``weight(value)`` over them."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumer = Consumer(
            client_config(
                settings,
                {
                    "group.id": f"streamrec-counter-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._weight = weight
        self.count = 0

    def update(self, timeout: float = 0.2) -> int:
        """Read what arrived since the last call; return the total count."""
        while batch := self._consumer.consume(10_000, timeout):
            values = [message.value() or b"" for message in batch if message.error() is None]
            self.count += len(values) if self._weight is None else sum(map(self._weight, values))
        return self.count

    def close(self) -> None:
        """Release the consumer."""
        self._consumer.close()


def accepted_events_counter(settings: Settings) -> MessageCounter:
    """A counter of the events ingest accepted: the events of its user-features batches."""
    return MessageCounter(settings, settings.topic_user_features, weight=feature_batch_event_count)
