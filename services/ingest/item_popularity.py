"""Item popularity: the agent ``count_popularity``, the table ``item_popularity`` and the popular lists.

``streamrec.item-events`` has one partition, so one worker owns item popularity (and the item
catalog, whose table has one partition too). ``count_popularity`` merges each popularity delta
message (``popularity_deltas.py``) into the items' decayed scores and keeps two rankings in memory:
the global one (:class:`~.features.PopularityRanking`) and one per category
(``category_popularity.py``). The scores it changed are held (:class:`HeldItemPopularity`) and
written to the table once per commit, not once per message. The timer ``publish_popular_items`` sends the
top items, available ones only (``item_catalog.py``), to ``streamrec.popular-items`` when they
changed, with the category lists that changed, and every category's list once a minute.

After every rebalance the rankings are rebuilt from the tables (:meth:`ItemPopularityTracker.
rebuild_ranking`) if this worker owns the partition, the catalog's mirror first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import faust
from faust.types import TP

from streamrec.ingest.category_popularity import CategoryPopularity, chunks
from streamrec.ingest.features import ItemPopularity, PopularityRanking, merge_popularity
from streamrec.ingest.item_catalog import ItemCatalog
from streamrec.ingest.metrics import IngestCounters
from streamrec.ingest.popularity_deltas import read_deltas
from streamrec.ingest.write_back import PartitionEvent, as_current_event
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import PopularItems
from streamrec.shared.settings import Settings

log = get_logger(__name__)

# Every category's popular list is published this often, changed or not: a scorer that started
# since (it reads only the newest popular-items message) gets them all.
POPULAR_CATEGORIES_REFRESH_SECONDS = 60.0


class HeldItemPopularity:
    """Item scores changed since the last :meth:`write`, read before the table ``item_popularity``.

    A delta message comes about every second and changes most of the items that had events, so
    writing each message's scores cost a table write (and a changelog record) per item and second:
    a quarter of a worker's CPU at a steady 1,000 events/s. Held here, each changed item is written
    once per commit (about every 3 s): the commit hook calls :meth:`write` before the offsets of
    the messages merged are committed (``commit.py``, step 2), so what a commit covers is in the
    changelog, as before. The rankings are updated at every message, as before.
    """

    def __init__(self, table: faust.Table, topic: str, stored: Mapping[str, Any] | None = None) -> None:
        self.table = table
        # The table's one partition: a commit happens outside any event, so its writes go under a
        # stand-in event of the item-events partition (the table's partition is the event's).
        self.partition_event = PartitionEvent(topic, 0)
        self._stored = stored  # what the table holds, read directly (default: its store, table.data)
        self._held: dict[str, ItemPopularity] = {}

    def get(self, item_id: str) -> ItemPopularity | None:
        """The item's latest popularity: held here if changed since the last write, else stored.

        A held one is returned itself: a caller that changes it holds it again."""
        held = self._held.get(item_id)
        if held is not None:
            return held
        try:  # the store itself: one lookup, where table.get makes two
            stored = (self.table.data if self._stored is None else self._stored)[item_id]
        except KeyError:
            return None
        return ItemPopularity.from_dict(stored)

    def hold(self, item_id: str, popularity: ItemPopularity) -> None:
        """Keep ``popularity`` for the next write."""
        self._held[item_id] = popularity

    def write(self) -> int:
        """Write what is held to the table (one changelog record per item); returns how many.

        Everything held was merged from messages of the partition while this worker owned it, and
        the commit that follows covers them: it is written even on the commit of a revoke."""
        held, self._held = self._held, {}
        with as_current_event(self.partition_event):
            for item_id, popularity in held.items():
                self.table[item_id] = popularity.to_dict()
        return len(held)

    def drop(self) -> None:
        """Forget what is held (after a rebalance: the table, as recovered, is what counts)."""
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


class ItemPopularityTracker:
    """Item popularity's table and rankings, and what was last published of them."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        table: MutableMapping[str, Any],
        held: HeldItemPopularity,
        catalog: ItemCatalog,
        by_category: CategoryPopularity,
        popular_items: faust.TopicT,
        counters: IngestCounters,
    ) -> None:
        self.app = app  # whether it rebalances, and which partitions it owns
        self.table = table  # the table item_popularity (read whole after a rebalance)
        self.held = held  # the scores changed since the last commit, read before the table
        self.catalog = catalog
        self.by_category = by_category
        self.popular_items = popular_items
        self.counters = counters
        self.half_life_hours = settings.popularity_half_life_hours
        self.ranking = PopularityRanking(
            settings.top_n + settings.history_len, settings.popularity_half_life_hours
        )
        self.item_partition = TP(settings.topic_item_events, 0)
        self.last_published: list[tuple[str, float]] = []
        self.categories_published_at = 0.0  # when every category's list was last published

    def owns_item_partition(self) -> bool:
        """True if this worker owns the item-events partition (and so item popularity)."""
        return self.item_partition in self.app.assignor.assigned_actives()

    async def count_popularity(self, stream: faust.StreamT[dict[str, Any]]) -> None:
        """Merge each message's popularity deltas into the items' decayed scores (one write per item)."""
        async for value in stream:
            try:  # written by ingest itself: only a bug or a foreign producer makes one unreadable
                deltas = read_deltas(value)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("skipping an unreadable item-events message", extra={"error": repr(exc)})
                continue
            changed: dict[str, ItemPopularity] = {}
            for item_id, delta in deltas:
                popularity = changed.get(item_id)
                if popularity is None:
                    popularity = changed[item_id] = self.held.get(item_id) or ItemPopularity()
                merge_popularity(popularity, delta, self.half_life_hours)
                self.counters.item_events += delta.count
            for item_id, popularity in changed.items():
                self.held.hold(item_id, popularity)
                self.ranking.update(item_id, popularity)
                self.by_category.update(item_id, popularity, self.catalog.mirror.categories_of(item_id))

    async def rebuild_ranking(self) -> None:
        """After every rebalance: rebuild the in-memory rankings from the tables if we own them."""
        self.held.drop()
        self.ranking.clear()
        self.by_category.clear()
        self.last_published.clear()
        self.categories_published_at = 0.0
        if not self.owns_item_partition():
            return
        self.catalog.rebuild()
        for item_id, stored in self.table.items():
            popularity = ItemPopularity.from_dict(stored)
            self.ranking.update(item_id, popularity)
            self.by_category.update(item_id, popularity, self.catalog.mirror.categories_of(item_id))
        log.info("popularity ranking rebuilt", extra={"candidates": len(self.ranking.keys)})

    async def publish_popular_items(self) -> None:
        """Publish the top items when this worker owns the item partition and the list changed."""
        if self.app.rebalancing or not self.owns_item_partition():
            return
        now = time.time()
        mirror = self.catalog.mirror
        top = [(item, score) for item, score in self.ranking.top() if mirror.available(item, now)]
        everything = now - self.categories_published_at >= POPULAR_CATEGORIES_REFRESH_SECONDS
        lists = self.by_category.lists_to_publish(mirror, now, self.ranking.latest_event_time, everything)
        if everything:
            self.categories_published_at = now
        if not lists and (not top or top == self.last_published):
            return
        for part in chunks(lists) or [{}]:
            message = PopularItems(items=top, generated_at=now, categories=part)
            await self.popular_items.send(key=b"popular", value=message.to_json())
            self.counters.popular_published += 1
        self.last_published[:] = top
