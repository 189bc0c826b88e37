"""Popularity deltas: the item popularity of accepted events, from the fold to ``count_popularity``.

The fold adds each run's accepted events to an in-memory :class:`~.features.ItemPopularity` per
item and partition (:class:`PendingPopularity`). The sums go to ``streamrec.item-events`` about
once a second (the timer ``flush_popularity``) and before every offset commit (``commit.py``),
one message for many runs (:func:`delta_messages`); ``count_popularity`` (``item_popularity.py``)
merges them into the ``item_popularity`` table. Since a delta is a sum, any grouping of the
events gives the same scores (:func:`~.features.merge_popularity`).

Versions before the write-back of user states kept a partition's unsent popularity in
``user_state`` under a reserved key (:func:`pending_popularity_key`): after a rebalance it is
still taken over from there, and the key is emptied at the next commit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import faust

from streamrec.ingest.features import ItemPopularity, add_item_event, merge_popularity
from streamrec.ingest.metrics import IngestCounters
from streamrec.shared.events import Interaction

DELTA_ITEMS = "items"  # the list's field of a popularity delta message
DELTA_MESSAGE_MAX_ITEMS = 5_000  # ~200 KB of JSON: far below Kafka's 1 MB default message size
POPULARITY_FLUSH_SECONDS = 1.0  # popularity deltas go out this often (and before every commit)


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
    left on the topic: several events ``{"events": [[item, timestamp, weight], …]}`` and one event
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


class PendingPopularity:
    """Per partition, the popularity of the events accepted since the last flush, and its sending."""

    def __init__(self, item_events: faust.TopicT, half_life_hours: float, counters: IngestCounters) -> None:
        self.item_events = item_events
        self.half_life_hours = half_life_hours
        self.counters = counters
        self._pending: dict[int, dict[str, ItemPopularity]] = {}
        # Partitions whose popularity stored by an older version in user_state must be emptied.
        self._stored_to_empty: set[int] = set()

    def add(self, partition: int, events: Iterable[Interaction]) -> None:
        """Count ``events`` (accepted on ``partition``) towards their items' popularity."""
        pending = self._pending.setdefault(partition, {})
        half_life = self.half_life_hours
        for event in events:
            item = pending.get(event.item_id)
            if item is None:
                item = pending[event.item_id] = ItemPopularity()
            add_item_event(item, event.timestamp, event.weight, half_life)

    async def flush(self) -> None:
        """Send the popularity accumulated since the last flush (the timer ``flush_popularity``,
        and the first step before every commit)."""
        deltas: dict[str, ItemPopularity] = {}
        for pending in self._pending.values():
            for item_id, delta in pending.items():
                merge_popularity(deltas.setdefault(item_id, ItemPopularity()), delta, self.half_life_hours)
            pending.clear()
        for value in delta_messages(deltas):
            await self.item_events.send(value=value, partition=0)
            self.counters.popularity_deltas += 1

    def stored_to_empty(self) -> dict[int, dict[str, Any]]:
        """Per partition, the ``user_state`` values that empty what an older version stored there."""
        return {
            partition: {pending_popularity_key(partition): popularity_rows({})}
            for partition in self._stored_to_empty
        }

    def emptied(self, partitions: Collection[int]) -> None:
        """Note that the stored popularity of ``partitions`` was emptied (their values were written)."""
        self._stored_to_empty.difference_update(partitions)

    def recover(self, owned: Collection[int], user_state: Mapping[str, Any]) -> None:
        """After a rebalance: forget the partitions other workers own now, and take over the unsent
        popularity an older version left in ``user_state`` for the partitions this worker owns."""
        for partition in set(self._pending) - set(owned):
            del self._pending[partition]
        for partition in owned:
            stored = user_state.get(pending_popularity_key(partition))
            if stored and stored.get(DELTA_ITEMS):
                self._stored_to_empty.add(partition)
                pending = self._pending.setdefault(partition, {})
                for item_id, delta in read_deltas(stored):
                    merge_popularity(
                        pending.setdefault(item_id, ItemPopularity()), delta, self.half_life_hours
                    )
