"""The item catalog: the agent ``apply_catalog``, the table ``item_catalog`` and its mirror in memory.

Each message of the items topic is validated (``shared/catalog.py``): a valid one is kept in
``item_catalog`` (a tombstone removes the entry), applied to :attr:`ItemCatalog.mirror` (the
availability and categories the popular lists are filtered and grouped by) and announced to the
scorers on ``streamrec.catalog``; an invalid one goes to ``items.dlq`` with the reason. When an
item's categories change, its popularity is ranked in its new categories at once.

The table has one partition, owned by the same worker as ``item_popularity``: the mirror is
rebuilt by that table's recovery (:meth:`ItemPopularityTracker.rebuild_ranking
<streamrec.ingest.item_popularity.ItemPopularityTracker.rebuild_ranking>`), not by this one's.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import faust

from streamrec.ingest.category_popularity import CategoryPopularity
from streamrec.ingest.dead_letters import dead_letter
from streamrec.ingest.features import ItemPopularity
from streamrec.ingest.metrics import INVALID_CATALOG, IngestCounters
from streamrec.shared.catalog import ItemRecord, ServingCatalog, parse_item
from streamrec.shared.events import Rejection, RejectReason, normalise_id
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import CatalogChange
from streamrec.shared.settings import Settings

log = get_logger(__name__)


class ItemCatalog:
    """The catalog's table, its in-memory mirror, and the agent that applies catalog messages."""

    def __init__(
        self,
        settings: Settings,
        table: MutableMapping[str, Any],
        item_popularity: Mapping[str, Any],
        by_category: CategoryPopularity,
        items_dlq: faust.TopicT,
        catalog_out: faust.TopicT,
        counters: IngestCounters,
    ) -> None:
        self.settings = settings
        self.table = table  # the table item_catalog
        self.item_popularity = item_popularity  # the table item_popularity (read only)
        self.by_category = by_category
        self.items_dlq = items_dlq
        self.catalog_out = catalog_out
        self.counters = counters
        self.mirror = ServingCatalog()  # availability and categories of item_catalog, for the popular lists

    def rebuild(self) -> None:
        """The mirror from the table (called by the item popularity's recovery: every table is
        recovered before any table's recovery callbacks run)."""
        self.mirror.clear()
        for item_id, stored in self.table.items():
            self.mirror.apply(item_id, ItemRecord.from_dict(stored))

    async def apply_catalog(self, stream: faust.StreamT[Any]) -> None:
        """Validate each catalog message, keep it in ``item_catalog`` and announce it to the scorers;
        invalid ones go to the catalog's dead-letter topic with the reason."""
        async for event in stream.events():
            record = event.message
            change = self.catalog_change(record)
            if isinstance(change, Rejection):
                self.counters.catalog_rejected += 1
                INVALID_CATALOG.labels(str(change.reason)).inc()
                raw = record.value or b""
                await self.items_dlq.send(
                    key=record.key, value=dead_letter(record, raw, change.reason, change.detail)
                )
                continue
            if change.record is None:
                self.table.pop(change.item_id, None)
            else:
                self.table[change.item_id] = change.record.to_dict()
            self.mirror.apply(change.item_id, change.record)
            if change.record is not None and (stored := self.item_popularity.get(change.item_id)) is not None:
                self.by_category.update(
                    change.item_id, ItemPopularity.from_dict(stored), change.record.categories
                )
            self.counters.catalog_changes += 1
            await self.catalog_out.send(key=change.item_id.encode(), value=change.to_json())

    def catalog_change(self, record: faust.types.Message) -> CatalogChange | Rejection:
        """The change a catalog message makes, or why it is refused. A tombstone (no value) removes
        the entry of the item its key names."""
        if record.value is None:
            key = record.key.decode("utf-8", errors="replace") if record.key else None
            item_id = None if key is None else normalise_id(key)
            if item_id is None:
                return Rejection(RejectReason.BAD_ID, "a tombstone (no value) needs the item id as its key")
            return CatalogChange(item_id, None)
        try:
            parsed = parse_item(record.value, max_bytes=self.settings.max_event_bytes)
        except Exception as exc:  # a bug must not stop the stream: park the message, keep going
            log.exception("catalog message could not be validated", extra={"offset": record.offset})
            return Rejection(RejectReason.INVALID_FIELD, f"unexpected error: {exc!r}")
        return parsed if isinstance(parsed, Rejection) else CatalogChange(parsed.item_id, parsed)
