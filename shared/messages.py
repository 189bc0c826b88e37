"""The Kafka messages one service writes and another reads (JSON, UTF-8), each defined once.

``docs/architecture.md`` ("Contract 2: internal messages") documents the same messages for people;
change both together. The topics are in shared/kafka_topics.py.

Data flow::

    interactions ──► ingest ──► streamrec.user-features (one FeatureBatch per batch) ──► scorer ──► Redis recs:{user}
         │             │  └──► streamrec.item-events (popularity deltas) ──► ingest (popularity table)
         │             │                    └──► streamrec.popular-items ──► scorer ──► Redis popular
         │             └──► interactions.dlq (invalid events + reason)
         │          streamrec.user-features ──► trainer ──► model registry ──► streamrec.models ──► scorer
    items ──► ingest [table item_catalog] ──► streamrec.catalog ──► scorer ──► Redis catalog, popular:{category}
                └──► items.dlq (invalid catalog messages + reason)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamrec.shared.catalog import ItemRecord
from streamrec.shared.events import Interaction


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    """One user's features after a batch: the scorer's model input and exclusion list."""

    user_id: str
    history: list[str]  # item ids, oldest first, at most settings.history_len
    event_count: int  # accepted events of this user so far


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """ingest -> scorer, trainer on ``topic_user_features``: what one batch of one partition changed.

    One message per batch of input events that ingest folded on one partition (split by users
    into messages of a few hundred KB at most), sent to that partition number, no key:

    - ``users``: each user the batch touched, with the state after the whole batch (the scorer
      re-scores each once);
    - ``events``: the batch's accepted events in the order they were applied (the trainer's
      training data; duplicates are not in it).

    JSON: ``{"users": [[user_id, [item, …], event_count], …], "events": [event, …],
    "updated_at": epoch seconds}``, an event as ``Interaction.to_dict``. :func:`decode_feature_batch`
    also reads the one-event-per-message form of streamrec ≤ 0.x (``{"user_id", "event",
    "history", "event_count", "updated_at"}``), so readers upgraded mid-stream finish the old
    messages.
    """

    users: list[UserSnapshot]
    events: list[Interaction]
    updated_at: float
    # Users erased on this partition (``streamrec users forget``): readers drop everything they
    # hold of them, in message order. JSON key "forgotten", left out when empty.
    forgotten: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        data: dict[str, Any] = {
            "users": [[user.user_id, user.history, user.event_count] for user in self.users],
            # orjson writes a dataclass as its fields in order: the same JSON as Interaction.to_dict.
            "events": self.events,
            "updated_at": self.updated_at,
        }
        if self.forgotten:
            data["forgotten"] = self.forgotten
        return orjson.dumps(data)


class FeatureBatchDecodeError(ValueError):
    """A user-features message is in no form this version reads (says why)."""


def feature_batch_event_count(raw: bytes) -> int:
    """How many accepted events a user-features message carries (0 for one no reader can read)."""
    try:
        return len(decode_feature_batch(raw).events)
    except FeatureBatchDecodeError:
        return 0


def decode_feature_batch(raw: bytes | None) -> FeatureBatch:
    """A :class:`FeatureBatch` from a user-features message, either form; raises FeatureBatchDecodeError."""
    try:
        data = orjson.loads(raw or b"")
        if "users" in data:
            return FeatureBatch(
                users=[
                    UserSnapshot(str(user), list(history), int(count))
                    for user, history, count in data["users"]
                ],
                events=[Interaction.from_dict(event) for event in data["events"]],
                updated_at=float(data["updated_at"]),
                forgotten=[str(user) for user in data.get("forgotten", ())],
            )
        event = Interaction.from_dict(data["event"])  # the older one-event form
        return FeatureBatch(
            users=[UserSnapshot(str(data["user_id"]), list(data["history"]), int(data["event_count"]))],
            events=[event],
            updated_at=float(data["updated_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeatureBatchDecodeError(f"not a user-features message: {exc!r}") from None


FORGET_USER = "forget_user"


@dataclass(frozen=True, slots=True)
class ForgetUser:
    """API, CLI -> ingest on ``topic_control``: erase every trace of a user.

    Keyed by the (normalised) user id and sent to the user's home partition (the murmur2
    partitioner, as ``services/ingest/rekeying.py``'s ``partition_for``). JSON::

        {"type": "forget_user", "user_id": "42", "requested_at": <epoch s>}

    Events of the user with a timestamp up to ``requested_at`` that arrive later are dropped;
    a later event starts a new history.
    """

    user_id: str
    requested_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps({"type": FORGET_USER, "user_id": self.user_id, "requested_at": self.requested_at})

    @classmethod
    def from_json(cls, raw: bytes | None) -> ForgetUser:
        """Deserialise from Kafka; ValueError for anything but a forget request."""
        try:
            data = orjson.loads(raw or b"")
            if data.get("type") != FORGET_USER:
                raise ValueError(f"not a {FORGET_USER} message: type {data.get('type')!r}")
            user_id, requested_at = data["user_id"], float(data["requested_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a control message: {exc!r}") from None
        if not isinstance(user_id, str) or not user_id or not math.isfinite(requested_at):
            raise ValueError(
                f"invalid {FORGET_USER} message: user_id {user_id!r}, requested_at {requested_at}"
            )
        return cls(user_id=user_id, requested_at=requested_at)


@dataclass(frozen=True, slots=True)
class PopularItems:
    """ingest -> scorer on ``topic_popular_items``: the most popular available items, best first.

    ``categories`` holds the popular items of the categories whose list changed since the last
    message (every category now and then), so one message need not carry them all: a reader
    applies the categories of every message and the global list of the newest. JSON:
    ``{"items": [[item_id, score], …], "categories": {category: [[item_id, score], …]}, "generated_at"}``
    (no ``categories`` before the catalog existed).
    """

    items: list[tuple[str, float]]
    generated_at: float = field(default_factory=time.time)
    categories: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps(
            {"items": self.items, "categories": self.categories, "generated_at": self.generated_at}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> PopularItems:
        """Deserialise from Kafka."""
        data = orjson.loads(raw)
        return cls(
            items=_ranked(data["items"]),
            generated_at=data["generated_at"],
            categories={str(c): _ranked(items) for c, items in data.get("categories", {}).items()},
        )


def _ranked(rows: list[list[Any]]) -> list[tuple[str, float]]:
    return [(str(item), float(score)) for item, score in rows]


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """ingest -> scorer on ``topic_catalog`` (key = item id): an item's validated catalog entry.

    JSON: the entry as ``ItemRecord.to_dict`` (shared/catalog.py) without its properties
    (serving does not read them), or ``{"item_id": …, "removed": true}`` when a tombstone
    removed the item's entry.
    """

    item_id: str
    record: ItemRecord | None  # None: the entry was removed

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        if self.record is None:
            return orjson.dumps({"item_id": self.item_id, "removed": True})
        return orjson.dumps({**self.record.to_dict(), "properties": {}})

    @classmethod
    def from_json(cls, raw: bytes) -> CatalogChange:
        """Deserialise from Kafka (raises KeyError/TypeError/ValueError for a foreign message)."""
        data = orjson.loads(raw)
        if data.get("removed"):
            return cls(str(data["item_id"]), None)
        record = ItemRecord.from_dict(data)
        return cls(record.item_id, record)


@dataclass(frozen=True, slots=True)
class ModelAnnouncement:
    """trainer -> scorer on ``topic_models``: a new model version is in the registry."""

    version: str
    created_at: float

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps({"version": self.version, "created_at": self.created_at})

    @classmethod
    def from_json(cls, raw: bytes) -> ModelAnnouncement:
        """Deserialise from Kafka."""
        data = orjson.loads(raw)
        return cls(version=data["version"], created_at=data["created_at"])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """ingest -> ``topic_dlq``: an event that was refused, why, and the original payload."""

    reason: str
    detail: str
    payload: str  # the original bytes, decoded as UTF-8 with replacement characters
    source_topic: str
    source_partition: int
    source_offset: int
    rejected_at: float

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "payload": self.payload,
                "source": {
                    "topic": self.source_topic,
                    "partition": self.source_partition,
                    "offset": self.source_offset,
                },
                "rejected_at": self.rejected_at,
            }
        )
