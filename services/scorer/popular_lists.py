"""The popular lists a scorer serves as the fallback and writes to Redis: the global one
(``RedisKeys.popular``) and one per category (``RedisKeys.popular_in``), without unavailable items."""

from __future__ import annotations

import time

from streamrec.scorer.catalog_replica import CatalogReplica
from streamrec.scorer.redis_writer import RedisWriter
from streamrec.shared.cached_list import CachedList
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import PopularItems
from streamrec.shared.redis_keys import RedisKeys

log = get_logger(__name__)


class PopularLists:
    """The latest popular items read from ``topic_popular_items``, and their lists in Redis."""

    def __init__(
        self, writer: RedisWriter, keys: RedisKeys, catalog: CatalogReplica, top_n: int, value_format: str
    ) -> None:
        self.writer = writer
        self.keys = keys
        self.catalog = catalog
        self.top_n = top_n
        self.value_format = value_format
        self.popular: PopularItems | None = None  # the newest message: the fallback of scoring
        self.by_category: dict[str, list[tuple[str, float]]] = {}  # every message's categories

    def set_popular(self, popular: PopularItems) -> bool:
        """Serve ``popular`` and write its list to Redis; True if it is the first one."""
        first = self.popular is None
        self.popular = popular
        now = time.time()
        available = [(item, score) for item, score in popular.items if self.catalog.available(item, now)]
        cached = CachedList(available[: self.top_n], None, popular.generated_at, "fallback")
        # No TTL: the fallback must outlive a pause of ingest; it is replaced on every publish.
        self.writer.set("write the popular list", self.keys.popular, cached.encode(self.value_format))
        log.debug("popular list updated", extra={"items": len(popular.items)})
        return first

    def update_categories(self, categories: dict[str, list[tuple[str, float]]]) -> None:
        """Keep the categories' new lists and write them."""
        self.by_category.update(categories)
        self.write_categories(categories)

    def write_categories(self, lists: dict[str, list[tuple[str, float]]]) -> None:
        """SET each category's popular list, without the items unavailable now (no TTL, like popular)."""
        now = time.time()
        values = {
            self.keys.popular_in(category): CachedList(
                [(item, score) for item, score in items if self.catalog.available(item, now)][: self.top_n],
                None,
                now,
                "fallback",
            ).encode(self.value_format)
            for category, items in lists.items()
        }
        self.writer.set_many(f"write {len(values)} category popular lists", values)
