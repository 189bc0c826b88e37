"""Ingest's internal messages: where an event is processed, and popularity deltas between agents.

**Where an event is processed (the home rule).** A Faust table keeps a user on the partition of
the events that changed it, so all of one user's events must be folded on one partition. An
input message keyed by its event's user id (the key's UTF-8 bytes equal the normalised
``user_id``) is already there, whatever partitioner the producer used, as long as it keys every
event of that user the same way: ingest folds it where it lies, with no extra hop. Every other
valid event (no key, or a key that is not the user id) is re-published once to
``streamrec-ingest-rekeyed``, keyed by user id, on :func:`partition_for` the user id (the murmur2
hash of Kafka's Java client, of aiokafka and of streamrec's publisher), and folded there.

Edge case: a producer that keys some of a user's events and not others must use that same
murmur2 partitioner for the keyed ones (librdkafka clients: ``partitioner=murmur2_random``), or
the user's state splits across two partitions. Changing the input's partition count moves keyed
users too, as in any Kafka application.

**Popularity deltas.** ``build_features`` adds its accepted events to an in-memory
:class:`~.features.ItemPopularity` per item and sends the sums to ``streamrec.item-events`` about
once a second and before every offset commit, one message for many batches (:func:`delta_message`);
``count_popularity`` merges them into the ``item_popularity`` table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka.partitioner import murmur2

from streamrec.ingest.features import ItemPopularity
from streamrec.shared.events import Interaction

DELTA_ITEMS = "items"  # the list's field of a popularity delta message
DELTA_MESSAGE_MAX_ITEMS = 5_000  # ~200 KB of JSON: far below Kafka's 1 MB default message size


def partition_for(user_id: str, partitions: int) -> int:
    """The home partition of a re-keyed user: Kafka's default partitioner on the UTF-8 id."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def is_home(key: bytes | None, event: Interaction) -> bool:
    """True if an input message is keyed by its event's user id, so its partition is the user's."""
    return key is not None and key == event.user_id.encode()


def popularity_rows(deltas: Mapping[str, ItemPopularity]) -> dict[str, Any]:
    """``deltas`` as one JSON-ready value (the item-events message form, unsplit)."""
    return {DELTA_ITEMS: [[item, delta.score, delta.as_of, delta.count] for item, delta in deltas.items()]}


def delta_messages(deltas: Mapping[str, ItemPopularity]) -> Iterator[dict[str, Any]]:
    """The JSON values of item-events messages carrying ``deltas``: ``[item, score, as_of, count]`` each."""
    rows = popularity_rows(deltas)[DELTA_ITEMS]
    for start in range(0, len(rows), DELTA_MESSAGE_MAX_ITEMS):
        yield {DELTA_ITEMS: rows[start : start + DELTA_MESSAGE_MAX_ITEMS]}


def pending_popularity_key(partition: int) -> str:
    """The ``user_state`` key of a partition's unsent popularity: NUL never starts a user id."""
    return f"\x00pending-popularity:{partition}"


def read_deltas(value: dict[str, Any]) -> list[tuple[str, ItemPopularity]]:
    """``(item_id, delta)`` of an item-events message.

    Also reads the two older forms, so a worker upgraded mid-stream finishes what its predecessor
    left on the topic: a bundle ``{"events": [[item, timestamp, weight], …]}`` and one event
    ``{"item_id", "timestamp", "weight"}``; each event becomes a delta of one event.
    """
    if DELTA_ITEMS in value:
        return [
            (str(item), ItemPopularity(float(score), float(as_of), int(count)))
            for item, score, as_of, count in value[DELTA_ITEMS]
        ]
    events = (
        value["events"] if "events" in value else [[value["item_id"], value["timestamp"], value["weight"]]]
    )
    return [(str(item), ItemPopularity(float(weight), float(ts), 1)) for item, ts, weight in events]
