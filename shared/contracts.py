"""Contracts between the services: internal Kafka messages, Redis key layout, ONNX signature.

Everything one service writes and another reads is defined here, once. ``docs/architecture.md``
documents the same contracts for people; change both together.

Data flow::

    interactions ──► ingest ──► streamrec.user-features ──► scorer ──► Redis recs:{user}
         │             │  └──► streamrec.item-events (bundles) ──► ingest (popularity table)
         │             │                    └──► streamrec.popular-items ──► scorer ──► Redis popular
         │             └──► interactions.dlq (invalid events + reason)
         │          streamrec.user-features ──► trainer ──► model registry ──► streamrec.models ──► scorer
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .events import Interaction
from .settings import Settings

# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """A topic streamrec creates, with its partition count."""

    name: str
    partitions: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic streamrec needs (Faust's own changelog topics are created by Faust).

    Per-user topics share ``settings.partitions`` so that a user's events, features and tables
    live on the same partition number. Item popularity and model announcements are global, so
    they have one partition (one owner, total order).
    """
    p = settings.partitions
    return [
        TopicSpec(settings.topic_interactions, p),
        TopicSpec(settings.topic_dlq, p),
        TopicSpec(settings.topic_user_features, p),
        TopicSpec(settings.topic_item_events, 1),
        TopicSpec(settings.topic_popular_items, 1),
        TopicSpec(settings.topic_models, 1),
    ]


# --------------------------------------------------------------------------------------------
# Kafka messages between services (JSON, UTF-8)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """ingest -> scorer, trainer on ``topic_user_features``; key = user_id.

    Sent after every accepted event: the event itself (the trainer's training data) and the
    user's recent history after it (the scorer's model input and exclusion list).
    """

    user_id: str
    event: Interaction
    history: list[str]  # item ids, oldest first, at most settings.history_len
    event_count: int  # accepted events of this user so far
    updated_at: float

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "event": self.event.to_dict(),
                "history": self.history,
                "event_count": self.event_count,
                "updated_at": self.updated_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> UserFeatures:
        """Deserialise from Kafka."""
        data = orjson.loads(raw)
        return cls(
            user_id=data["user_id"],
            event=Interaction.from_dict(data["event"]),
            history=data["history"],
            event_count=data["event_count"],
            updated_at=data["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class PopularItems:
    """ingest -> scorer on ``topic_popular_items``: the most popular items, best first."""

    items: list[tuple[str, float]]
    generated_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """Serialise for Kafka."""
        return orjson.dumps({"items": self.items, "generated_at": self.generated_at})

    @classmethod
    def from_json(cls, raw: bytes) -> PopularItems:
        """Deserialise from Kafka."""
        data = orjson.loads(raw)
        return cls(items=[(str(i), float(s)) for i, s in data["items"]], generated_at=data["generated_at"])


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


# --------------------------------------------------------------------------------------------
# Redis key layout (written by the scorer, read by clients)
# --------------------------------------------------------------------------------------------

Source = Literal["personal", "fallback"]


@dataclass(frozen=True)
class RedisKeys:
    """Names of every Redis key streamrec uses, under one configurable prefix.

    - ``{prefix}:recs:{user_id}``  STRING, a :class:`CachedList` JSON: the user's top-N.
    - ``{prefix}:popular``        STRING, a :class:`CachedList` JSON: fallback for cold users.
    - ``{prefix}:model``          STRING, the model version the scorer currently serves.
    """

    prefix: str = "streamrec"

    def recs(self, user_id: str) -> str:
        """Key of one user's cached recommendations."""
        return f"{self.prefix}:recs:{user_id}"

    @property
    def popular(self) -> str:
        """Key of the popular-items fallback list."""
        return f"{self.prefix}:popular"

    @property
    def model(self) -> str:
        """Key holding the served model version."""
        return f"{self.prefix}:model"


@dataclass(frozen=True, slots=True)
class CachedList:
    """A ranked list as stored in Redis. Compact JSON::

    {"v": "<model version or null>", "t": <generated_at epoch s>, "src": "personal",
     "items": [["<item_id>", <score>], ...]}   # best first
    """

    items: list[tuple[str, float]]
    model_version: str | None
    generated_at: float
    source: Source

    def to_json(self) -> bytes:
        """Serialise for Redis."""
        return orjson.dumps(
            {
                "v": self.model_version,
                "t": round(self.generated_at, 3),
                "src": self.source,
                "items": [[item, round(score, 6)] for item, score in self.items],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> CachedList:
        """Deserialise from Redis."""
        data = orjson.loads(raw)
        return cls(
            items=[(str(i), float(s)) for i, s in data["items"]],
            model_version=data["v"],
            generated_at=data["t"],
            source=data["src"],
        )

    def to_response(self, user_id: str, n: int | None = None) -> dict[str, Any]:
        """The public JSON shape (``streamrec recommend --json``, HTTP API)."""
        items = self.items if n is None else self.items[:n]
        return {
            "user_id": user_id,
            "items": [{"item_id": item, "score": score} for item, score in items],
            "model_version": self.model_version,
            "generated_at": self.generated_at,
            "source": self.source,
        }


# --------------------------------------------------------------------------------------------
# Model contract (ONNX), shared by trainer (export) and scorer (serve)
# --------------------------------------------------------------------------------------------

PADDING_INDEX = 0  # item index 0 is padding; real items are 1..n_items in vocabulary order
ONNX_INPUT_HISTORY = "history"  # int64 [batch, max_seq_len]: item indices, oldest first,
#                                 left-padded with 0 (the most recent item is last)
ONNX_INPUT_EXCLUDE = "exclude"  # int64 [batch, n_exclude]: indices never to recommend, 0-padded
ONNX_OUTPUT_SCORES = "scores"  # float32 [batch, top_k]: best first
ONNX_OUTPUT_ITEMS = "items"  # int64 [batch, top_k]: item indices matching `scores`
MODEL_FILE = "model.onnx"
VOCAB_FILE = "items.json"  # JSON list: vocabulary[i-1] is the item id of index i
MANIFEST_FILE = "manifest.json"
PROMOTED_FILE = "PROMOTED"  # text file in the model dir: the version scorers serve
PROMOTIONS_FILE = "promotions.jsonl"  # append-only log of promotions and rollbacks
