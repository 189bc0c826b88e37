"""The scorer's control topics, read by every scorer on its own (partition 0 assigned by hand,
outside the group): popular items (``topic_popular_items``), model announcements
(``topic_models``) and catalog changes (``topic_catalog``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from streamrec.scorer.catalog_replica import CatalogReplica
from streamrec.shared.kafka_config import client_config
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import CatalogChange, ModelAnnouncement, PopularItems
from streamrec.shared.settings import Settings

log = get_logger(__name__)


@dataclass(slots=True)
class ControlUpdates:
    """What arrived on the control topics since the last poll (only the newest of each counts)."""

    popular: PopularItems | None = None  # the newest popular list
    announced: ModelAnnouncement | None = None  # the newest model announcement
    categories: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # every message's
    catalog_changed: bool = False  # changes were applied to the catalog replica


class ControlTopics:
    """A consumer outside the group, so that every scorer sees every popular list and model."""

    def __init__(self, settings: Settings, catalog: CatalogReplica) -> None:
        self.settings = settings
        self.catalog = catalog  # catalog changes are applied to it as they are read
        self.consumer: Consumer | None = None

    def connect(self) -> None:
        """Assign the control topics: the last popular list published, the model announcements from
        now on (the registry's PROMOTED was read just before), and the catalog changes the replica
        does not hold."""
        consumer = Consumer(
            client_config(
                self.settings,
                {
                    # Required by the client, never joined: assign() does not use the group.
                    "group.id": f"streamrec-scorer-control-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "latest",
                },
            )
        )
        popular = TopicPartition(self.settings.topic_popular_items, 0)
        low, high = consumer.get_watermark_offsets(popular, timeout=10.0)
        # The last popular list already published is the fallback to serve right now.
        popular.offset = high - 1 if high > low else OFFSET_BEGINNING
        models = TopicPartition(self.settings.topic_models, 0, OFFSET_END)
        offset = self.catalog.catalog.offset
        catalog = TopicPartition(
            self.settings.topic_catalog, 0, offset + 1 if offset >= 0 else OFFSET_BEGINNING
        )
        consumer.assign([popular, models, catalog])
        self.consumer = consumer

    def poll(self) -> ControlUpdates:
        """Read what arrived, without waiting; catalog changes are applied to the replica in order."""
        assert self.consumer is not None, "connect() first"
        updates = ControlUpdates()
        for message in self.consumer.consume(500, timeout=0):
            if error := message.error():
                log.warning("Kafka control consumer error", extra={"error": error.str()})
                continue
            topic = message.topic()
            try:
                if topic == self.settings.topic_catalog:
                    self.catalog.apply(CatalogChange.from_json(message.value()), message.offset())
                    updates.catalog_changed = True
                elif topic == self.settings.topic_popular_items:
                    updates.popular = PopularItems.from_json(message.value())
                    updates.categories.update(updates.popular.categories)  # every message's count
                else:
                    updates.announced = ModelAnnouncement.from_json(message.value())
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("skipping unreadable message", extra={"topic": topic, "error": str(exc)})
        return updates
