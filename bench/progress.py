"""How far the pipeline got: events ingest accepted, and events the scorer committed, read off Kafka."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.shared.kafka_config import client_config
from streamrec.shared.kafka_topics import SCORER_GROUP
from streamrec.shared.messages import feature_batch_event_count
from streamrec.shared.settings import Settings


class PipelineProgress:
    """Events ingest accepted (the events of its user-features batches) and the events the scorer committed."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic_user_features
        config = {"enable.auto.commit": False}
        self._reader = Consumer(
            client_config(settings, {**config, "group.id": f"bench-progress-{uuid.uuid4().hex}"})
        )
        self._partitions = [TopicPartition(self.topic, p) for p in range(settings.partitions)]
        self._reader.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)]
        )
        # Never subscribes, so it never joins the scorers' group: it only reads their commits.
        self._scorers = Consumer(client_config(settings, {**config, "group.id": SCORER_GROUP}))
        self.ingested = 0
        # Per partition, the events of all its messages up to each offset: a commit at offset n
        # means the scorer processed events_through[partition][n - 1] events of that partition.
        self._events_through: dict[int, dict[int, int]] = {p: {} for p in range(settings.partitions)}
        self._partition_events = dict.fromkeys(range(settings.partitions), 0)

    def update(self) -> tuple[int, int]:
        """(events ingest accepted so far, events the scorer committed); bounded in time."""
        for _ in range(50):  # a bounded catch-up per call, so the samples keep their pace
            batch = self._reader.consume(10_000, 0.05)
            for message in batch:
                if message.error() is not None:
                    continue
                events = feature_batch_event_count(message.value() or b"")
                self.ingested += events
                self._partition_events[message.partition()] += events
                self._events_through[message.partition()][message.offset()] = self._partition_events[
                    message.partition()
                ]
            if len(batch) < 10_000:
                break
        committed = self._scorers.committed(self._partitions, timeout=10)
        scored = sum(
            self._events_through[tp.partition].get(tp.offset - 1, 0) for tp in committed if tp.offset > 0
        )
        return self.ingested, scored

    def close(self) -> None:
        """Release both consumers."""
        self._reader.close()
        self._scorers.close()
