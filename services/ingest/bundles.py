"""Bundles: how ingest moves validated events between its own agents, many per Kafka message.

Faust spends far more per *message* than per event folded into a feature (stream plumbing, acks,
offset tracking), so ingest's two internal hops carry bundles instead of single events:

- ``validate_events`` → ``build_features``: the valid events of one batch read from the input,
  one bundle per target partition of ``streamrec-ingest-events-by-user``. The partition is
  :func:`partition_for` of the user id, the murmur2 hash of Kafka's default partitioner, so a
  user's events always land on one partition (where the ``user_state`` table keeps that user)
  and it is the partition Faust itself chose when these messages carried one event keyed by user.
- ``build_features`` → ``count_popularity``: the ``(item_id, timestamp, weight)`` of the events
  one bundle accepted, as one message on ``streamrec.item-events``.

Both readers also accept the older one-event-per-message form, so a worker upgraded in the middle
of a stream finishes the messages its predecessor left on the internal topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2

from ..shared.events import Interaction

BUNDLE_EVENTS = "events"  # the list's field in both bundle forms


def partition_for(user_id: str, partitions: int) -> int:
    """The events-by-user partition of a user: Kafka's default partitioner on the UTF-8 id."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def group_by_partition(events: Iterable[Interaction], partitions: int) -> dict[int, list[Interaction]]:
    """The events per target partition, in their original order within each partition."""
    groups: dict[int, list[Interaction]] = {}
    for event in events:
        groups.setdefault(partition_for(event.user_id, partitions), []).append(event)
    return groups


def event_bundle(events: Iterable[Interaction]) -> dict[str, Any]:
    """The JSON value of an events-by-user message carrying ``events``."""
    return {BUNDLE_EVENTS: [event.to_dict() for event in events]}


def unbundle_events(value: dict[str, Any]) -> list[Interaction]:
    """The events of an events-by-user message, bundled or the older single event."""
    if BUNDLE_EVENTS in value:
        return [Interaction.from_dict(data) for data in value[BUNDLE_EVENTS]]
    return [Interaction.from_dict(value)]


def item_event_bundle(events: Iterable[Interaction]) -> dict[str, Any]:
    """The JSON value of an item-events message: ``[item_id, timestamp, weight]`` per event."""
    return {BUNDLE_EVENTS: [[event.item_id, event.timestamp, event.weight] for event in events]}


def unbundle_item_events(value: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(item_id, timestamp, weight)`` of an item-events message, bundled or the older single event."""
    if BUNDLE_EVENTS in value:
        return [(str(item), float(ts), float(weight)) for item, ts, weight in value[BUNDLE_EVENTS]]
    return [(str(value["item_id"]), float(value["timestamp"]), float(value["weight"]))]
