"""The topics streamrec creates and the consumer groups of its services.

Topic names are settings (``STREAMREC_TOPIC_*``, shared/settings.py); what each topic carries is in
shared/messages.py. ``docs/architecture.md`` documents the same contracts for people ("Data flow",
"Progress: consumer groups and what they commit"); change both together.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.shared.settings import Settings

# Ingest's Faust app id: also its consumer group (whose committed offsets say how far it got) and
# the prefix of the topics Faust creates for it.
INGEST_GROUP = "streamrec-ingest"
INGEST_REKEYED_TOPIC = f"{INGEST_GROUP}-rekeyed"  # valid events not keyed by their user, re-keyed
SCORER_GROUP = "streamrec-scorer"  # the scorers' consumer group on the user features
# The trainer keeps its position in its event log; it also commits it to this group, for visibility.
TRAINER_GROUP = "streamrec-trainer"


@dataclass(frozen=True)
class TopicSpec:
    """A topic streamrec creates, with its partition count."""

    name: str
    partitions: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic streamrec needs (Faust's own changelog topics are created by Faust).

    Per-user topics share ``settings.partitions`` so that a user's events, features and tables
    live on the same partition number. Item popularity and model announcements are global, so
    they have one partition (one owner, total order); so has the item catalog.
    """
    p = settings.partitions
    return [
        TopicSpec(settings.topic_interactions, p),
        TopicSpec(settings.topic_dlq, p),
        TopicSpec(settings.topic_user_features, p),
        TopicSpec(settings.topic_item_events, 1),
        TopicSpec(settings.topic_popular_items, 1),
        TopicSpec(settings.topic_models, 1),
        TopicSpec(settings.topic_items, 1),
        TopicSpec(settings.topic_items_dlq, 1),
        TopicSpec(settings.topic_catalog, 1),
        # Erasure requests: per user (keyed and partitioned like the interactions), so that the
        # ingest worker owning a user's events and state also reads the requests about that user.
        TopicSpec(settings.topic_control, p),
    ]
