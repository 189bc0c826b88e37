"""The scorer's Kafka intake of ``topic_user_features``: its consumers in the scorer group, the
micro-batches read from it, and the messages decoded from them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamrec.scorer.metrics import CONSUMER_LAG
from streamrec.shared.kafka_config import client_config
from streamrec.shared.kafka_topics import SCORER_GROUP
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import FeatureBatch, FeatureBatchDecodeError, decode_feature_batch
from streamrec.shared.settings import Settings

log = get_logger(__name__)

RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]


@dataclass(slots=True)
class DecodedBatch:
    """A micro-batch's readable messages, in order, and the next offset to read per partition."""

    messages: list[tuple[int, FeatureBatch]] = field(default_factory=list)  # (partition, message)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> offset


def tail_consumer(settings: Settings) -> Consumer:
    """A consumer with the scorer group's id that never subscribes: it reads the group's committed
    offsets and assigns partitions by hand (see :class:`~streamrec.scorer.recent_users.PartitionTail`)."""
    return Consumer(
        client_config(
            settings,
            {
                "group.id": SCORER_GROUP,  # to read its committed offsets; never subscribes
                "enable.auto.commit": False,
                "client.id": f"streamrec-scorer-tail-{uuid.uuid4().hex[:8]}",
            },
        )
    )


class UserFeaturesIntake:
    """The scorer group's consumer of the user features, read in micro-batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer: Consumer | None = None  # once subscribed

    def subscribe(
        self,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_commit: Callable[[object, list[TopicPartition]], None],
    ) -> Consumer:
        """Join the scorer group on ``topic_user_features``; the consumer, for its offsets' commits."""
        self.consumer = Consumer(
            client_config(
                self.settings,
                {
                    "group.id": SCORER_GROUP,
                    "enable.auto.commit": False,  # committed by hand, after the lists are in Redis
                    "auto.offset.reset": "earliest",
                    "client.id": f"streamrec-scorer-{uuid.uuid4().hex[:8]}",
                    # Tansu answers a fetch some time after data arrives, later with a longer wait,
                    # and holds a first join for half the session timeout.
                    "fetch.wait.max.ms": self.settings.kafka_fetch_wait_ms,
                    "session.timeout.ms": self.settings.kafka_session_timeout_ms,
                    "heartbeat.interval.ms": self.settings.kafka_heartbeat_interval_ms,
                    "on_commit": on_commit,
                },
            )
        )
        self.consumer.subscribe([self.settings.topic_user_features], on_assign=on_assign, on_revoke=on_revoke)
        return self.consumer

    def collect(self, idle_timeout: float) -> list[Message]:
        """Up to scorer_batch_size messages: wait for the first, then at most batch_wait for the rest."""
        assert self.consumer is not None, "subscribe() first"
        first = self.consumer.poll(idle_timeout)
        if first is None:
            return []
        messages = [first]
        room = self.settings.scorer_batch_size - 1
        if room > 0:
            messages += self.consumer.consume(room, timeout=self.settings.scorer_batch_wait_ms / 1000)
        return messages

    @staticmethod
    def decode(messages: list[Message]) -> DecodedBatch:
        """The readable messages and the offsets after every message (unreadable ones included: a
        message no scorer can read will not get better, so it is committed past). Raises
        KafkaException on a fatal consumer error."""
        decoded = DecodedBatch()
        for message in messages:
            if error := message.error():
                if error.fatal():
                    raise KafkaException(error)
                log.warning("Kafka consumer error", extra={"error": error.str()})
                continue
            decoded.next_offsets[(message.topic(), message.partition())] = message.offset() + 1
            try:
                decoded.messages.append((message.partition(), decode_feature_batch(message.value())))
            except FeatureBatchDecodeError as exc:
                log.error(
                    "skipping unreadable user-features message",
                    extra={"partition": message.partition(), "offset": message.offset(), "error": str(exc)},
                )
        return decoded

    def update_lag(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Lag after a batch: the largest cached high watermark minus next offset of its partitions."""
        assert self.consumer is not None
        lag = 0
        for (topic, partition), offset in next_offsets.items():
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high >= 0:
                lag = max(lag, high - offset)
        CONSUMER_LAG.set(lag)
