"""Category popularity, as plain logic: the popular items of each category, and what to publish.

Ingest keeps every item's catalog entry in its ``item_catalog`` table and a
:class:`~streamrec.shared.catalog.ServingCatalog` of it in memory (``item_catalog.py``).
:class:`CategoryPopularity` keeps a :class:`~.features.PopularityRanking` per category, fed with
the same popularity updates as the global one (``item_popularity.py``) and with the categories of
catalog changes, and says which categories' lists changed since they were last published.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamrec.ingest.features import ItemPopularity, PopularityRanking
from streamrec.shared.catalog import ServingCatalog

# A popular-items message carries at most this many category lists (of top_n items each, about
# 25 bytes per item in JSON): far below the 1 MB a Kafka message may have by default.
CATEGORIES_PER_MESSAGE = 200


class CategoryPopularity:
    """The ``size`` most popular items of every category, and the lists last published."""

    def __init__(self, size: int, half_life_hours: float) -> None:
        self.size = size
        self.half_life_hours = half_life_hours
        self._rankings: dict[str, PopularityRanking] = {}
        self._published: dict[str, list[tuple[str, float]]] = {}

    def update(self, item_id: str, popularity: ItemPopularity, categories: Iterable[str]) -> None:
        """Record the item's new popularity in each of its ``categories``."""
        for category in categories:
            ranking = self._rankings.get(category)
            if ranking is None:
                ranking = self._rankings[category] = PopularityRanking(self.size, self.half_life_hours)
            ranking.update(item_id, popularity)

    def clear(self) -> None:
        """Forget every ranking and what was published (before rebuilding from the tables)."""
        self._rankings.clear()
        self._published.clear()

    def lists_to_publish(
        self, catalog: ServingCatalog, now: float, as_of: float, everything: bool = False
    ) -> dict[str, list[tuple[str, float]]]:
        """Each category's available popular items (scores as of event time ``as_of``, comparable
        across categories), for the categories whose list changed since it was last returned here,
        or all of them with ``everything``. An item whose categories changed since its last event
        still has an entry in its old categories' rankings: it is left out of those here."""
        changed: dict[str, list[tuple[str, float]]] = {}
        for category, ranking in self._rankings.items():
            top = [
                (item, score)
                for item, score in ranking.top(as_of)
                if catalog.available(item, now) and category in catalog.categories_of(item)
            ]
            if everything or top != self._published.get(category):
                changed[category] = self._published[category] = top
        return changed


def chunks(lists: dict[str, list[tuple[str, float]]]) -> list[dict[str, list[tuple[str, float]]]]:
    """``lists`` split into parts of at most CATEGORIES_PER_MESSAGE categories (one message each)."""
    names = list(lists)
    return [
        {name: lists[name] for name in names[start : start + CATEGORIES_PER_MESSAGE]}
        for start in range(0, len(names), CATEGORIES_PER_MESSAGE)
    ]
