"""Feature state ingest keeps, as pure functions over plain data (no Faust, no Kafka).

Per user (:class:`UserState`, table ``user_state``): the last ``history_len`` events in timestamp
order, the accepted event count, first/last event time and the last ``dedup_window`` event ids.

Per item (:class:`ItemPopularity`, table ``item_popularity``): an exponentially time-decayed score
and a raw count. Decay is measured in *event time*, never wall-clock time, so replaying a stream
gives the same scores. :class:`PopularityRanking` keeps the current top items without rescanning
the table.

Every state type round-trips through ``to_dict`` / ``from_dict`` (JSON-ready) for Faust tables.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from streamrec.shared.events import Interaction
from streamrec.shared.settings import Settings

SECONDS_PER_HOUR = 3600.0

# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


# One remembered event of a user: ``[item_id, timestamp, event_type]``, a list as JSON reads it and
# never changed once made. Kept in that form, a stored state is used as the table gives it, and
# written as it is: a state of 200 events read and written per run cost 200 objects each way.
HistoryEntry = list[Any]
ITEM_ID, TIMESTAMP, EVENT_TYPE = 0, 1, 2  # the fields of a HistoryEntry


@dataclass(slots=True)
class UserState:
    """Everything ingest remembers about one user."""

    history: list[HistoryEntry] = field(default_factory=list)  # oldest first (by event time)
    event_count: int = 0  # accepted events, duplicates not counted
    first_seen: float | None = None  # earliest event time
    last_seen: float | None = None  # latest event time
    recent_event_ids: list[str] = field(default_factory=list)  # oldest first, for de-duplication

    def history_item_ids(self) -> list[str]:
        """Item ids of the history, oldest first (an item seen twice appears twice)."""
        return [entry[ITEM_ID] for entry in self.history]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; history entries are compact ``[item_id, timestamp, event_type]`` triples.

        The lists are copies (their entries are never changed): the state goes on changing after."""
        return {
            "history": list(self.history),
            "event_count": self.event_count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "recent_event_ids": list(self.recent_event_ids),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserState:
        """Inverse of :meth:`to_dict` (the lists are copied; their entries, never changed, are not)."""
        return cls(
            history=list(data["history"]),
            event_count=int(data["event_count"]),
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            recent_event_ids=list(data["recent_event_ids"]),
        )


def is_duplicate(state: UserState, event: Interaction) -> bool:
    """True if the event's id is among the user's recent event ids (events without an id never are)."""
    return event.event_id is not None and event.event_id in state.recent_event_ids


def apply_event(state: UserState, event: Interaction, settings: Settings) -> bool:
    """Add an accepted event to the user's state in place; returns False (state unchanged) for a duplicate.

    The history stays in timestamp order: a late event is inserted where it belongs (after events
    with the same timestamp), then only the newest ``settings.history_len`` entries are kept, so an
    event older than a full history is counted but not remembered.
    """
    if is_duplicate(state, event):
        return False
    entry = [event.item_id, event.timestamp, event.event_type]
    bisect.insort_right(state.history, entry, key=_entry_time)
    _keep_last(state.history, settings.history_len)

    if event.event_id is not None and settings.dedup_window > 0:
        state.recent_event_ids.append(event.event_id)
        _keep_last(state.recent_event_ids, settings.dedup_window)

    state.event_count += 1
    state.first_seen = event.timestamp if state.first_seen is None else min(state.first_seen, event.timestamp)
    state.last_seen = event.timestamp if state.last_seen is None else max(state.last_seen, event.timestamp)
    return True


def _entry_time(entry: HistoryEntry) -> float:
    return entry[TIMESTAMP]


def _keep_last(items: list[Any], n: int) -> None:
    if len(items) > n:
        del items[: len(items) - n]


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ItemPopularity:
    """Time-decayed popularity of one item.

    ``score`` is ``sum(weight * 0.5 ** ((as_of - t) / half_life))`` over the item's events, where
    ``as_of`` is the latest event time seen for the item. It depends only on the set of events,
    not on their arrival order or on the wall clock.
    """

    score: float = 0.0
    as_of: float = 0.0  # event time the score is decayed to
    count: int = 0  # raw number of events

    def score_at(self, at: float, half_life_hours: float) -> float:
        """The score decayed (or grown, for ``at < as_of``) to event time ``at``."""
        if self.score <= 0.0:
            return 0.0
        return self.score * 0.5 ** ((at - self.as_of) / (half_life_hours * SECONDS_PER_HOUR))

    def rank_key(self, half_life_hours: float) -> float:
        """log2 of the score decayed to time 0: orders items exactly like their scores at any one time.

        Unlike the score at "now", it only changes when the item gets an event, and then it only
        grows, which is what lets :class:`PopularityRanking` keep a top-k incrementally.
        """
        if self.score <= 0.0:
            return -math.inf
        return math.log2(self.score) + self.as_of / (half_life_hours * SECONDS_PER_HOUR)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"score": self.score, "as_of": self.as_of, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemPopularity:
        """Inverse of :meth:`to_dict`."""
        return cls(score=float(data["score"]), as_of=float(data["as_of"]), count=int(data["count"]))


def add_item_event(
    popularity: ItemPopularity, timestamp: float, weight: float, half_life_hours: float, count: int = 1
) -> None:
    """Add one event of the item (in place). A late event is decayed to the item's current ``as_of``.

    ``count`` > 1 adds a delta instead: ``weight`` is then the delta's score as of ``timestamp``,
    the sum of its events decayed to that time, which adds exactly like one event of that weight.
    """
    popularity.count += count
    if weight <= 0.0:
        return
    if timestamp >= popularity.as_of:
        popularity.score = popularity.score_at(timestamp, half_life_hours) + weight
        popularity.as_of = timestamp
    else:
        popularity.score += weight * 0.5 ** (
            (popularity.as_of - timestamp) / (half_life_hours * SECONDS_PER_HOUR)
        )


def merge_popularity(popularity: ItemPopularity, delta: ItemPopularity, half_life_hours: float) -> None:
    """Add a delta (the popularity of some more events of the item) in place; order never matters."""
    add_item_event(popularity, delta.as_of, delta.score, half_life_hours, count=delta.count)


class PopularityRanking:
    """The ``size`` most popular items, maintained incrementally as item scores change.

    Exact because an item's :meth:`ItemPopularity.rank_key` never decreases: an item that falls out
    of the kept set has ``size`` items above it that can only rise, so it can only come back when
    it gets an event itself, and then :meth:`update` sees it. Candidates are trimmed lazily (at
    twice ``size``) to keep updates O(1) amortised.
    """

    def __init__(self, size: int, half_life_hours: float) -> None:
        self.size = size
        self.half_life_hours = half_life_hours
        self.keys: dict[str, float] = {}  # candidate item -> rank key
        self.latest_event_time = 0.0  # the stream's "now": scores are reported as of this time

    def update(self, item_id: str, popularity: ItemPopularity) -> None:
        """Record the item's new popularity."""
        self.keys[item_id] = popularity.rank_key(self.half_life_hours)
        self.latest_event_time = max(self.latest_event_time, popularity.as_of)
        if len(self.keys) > 2 * self.size:
            self.keys = dict(heapq.nlargest(self.size, self.keys.items(), key=_by_value))

    def clear(self) -> None:
        """Forget everything (e.g. before rebuilding from the table)."""
        self.keys.clear()
        self.latest_event_time = 0.0

    def top(self, as_of: float | None = None) -> list[tuple[str, float]]:
        """Best first: ``(item_id, score as of the latest event time)``, or as of ``as_of`` (to
        compare the scores of several rankings); ties by item id."""
        scale = self.half_life_hours * SECONDS_PER_HOUR
        at = self.latest_event_time if as_of is None else as_of
        best = sorted(self.keys.items(), key=lambda kv: (-kv[1], kv[0]))[: self.size]
        return [(item, 2.0 ** (key - at / scale)) for item, key in best]


def _by_value(item: tuple[str, float]) -> float:
    return item[1]
