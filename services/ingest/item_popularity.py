"""Item popularity: the agent ``count_popularity``, the table ``item_popularity`` and the popular lists.

``streamrec.item-events`` has one partition, so one worker owns item popularity (and the item
catalog, whose table has one partition too). ``count_popularity`` merges each popularity delta
message (``popularity_deltas.py``) into the items' decayed scores, one table write per item and
message (a record batch per slice of items, ``changelog_writer.py``), and keeps two rankings in
memory: the global one (:class:`~.features.PopularityRanking`) and one per category
(``category_popularity.py``). The timer ``publish_popular_items`` sends the top items, available
ones only (``item_catalog.py``), to ``streamrec.popular-items`` when they changed, with the
category lists that changed, and every category's list once a minute.

After every rebalance the rankings are rebuilt from the tables (:meth:`ItemPopularityTracker.
rebuild_ranking`) if this worker owns the partition, the catalog's mirror first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import faust
from faust.types import TP

from streamrec.ingest.category_popularity import CategoryPopularity, chunks
from streamrec.ingest.features import ItemPopularity, PopularityRanking, merge_popularity
from streamrec.ingest.item_catalog import ItemCatalog
from streamrec.ingest.metrics import IngestCounters
from streamrec.ingest.popularity_deltas import read_deltas
from streamrec.ingest.write_back import StoredTable
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import PopularItems
from streamrec.shared.settings import Settings

log = get_logger(__name__)

# Every category's popular list is published this often, changed or not: a scorer that started
# since (it reads only the newest popular-items message) gets them all.
POPULAR_CATEGORIES_REFRESH_SECONDS = 60.0
WRITE_SLICE = 200  # item scores written between two turns of the event loop


class ItemPopularityTracker:
    """Item popularity's table and rankings, and what was last published of them."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        table: MutableMapping[str, Any],
        writes: StoredTable,
        catalog: ItemCatalog,
        by_category: CategoryPopularity,
        popular_items: faust.TopicT,
        counters: IngestCounters,
    ) -> None:
        self.app = app  # whether it rebalances, and which partitions it owns
        self.table = table  # the table item_popularity (read after a rebalance)
        self.writes = writes  # the same table, through its changelog writer (every write goes there)
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
        writes = self.writes
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
                    stored = writes.read(0, item_id)
                    popularity = changed[item_id] = (
                        ItemPopularity() if stored is None else ItemPopularity.from_dict(stored)
                    )
                merge_popularity(popularity, delta, self.half_life_hours)
                self.counters.item_events += delta.count
            items = list(changed.items())
            for start in range(0, len(items), WRITE_SLICE):
                if start:
                    # A message changes every item with events in the last second, thousands of
                    # them over a large catalog: let the runs of events go on between slices.
                    # The message is acknowledged (its offset committable) only once all are written.
                    await asyncio.sleep(0)
                written = items[start : start + WRITE_SLICE]
                writes.write(0, {item_id: popularity.to_dict() for item_id, popularity in written})
                for item_id, popularity in written:
                    self.ranking.update(item_id, popularity)
                    self.by_category.update(item_id, popularity, self.catalog.mirror.categories_of(item_id))

    async def rebuild_ranking(self) -> None:
        """After every rebalance: rebuild the in-memory rankings from the tables if we own them."""
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
