"""The scorer's replica of the serving catalog, followed from ``topic_catalog``: what it may serve.

Every scorer keeps the whole :class:`~streamrec.shared.catalog.ServingCatalog` (availability and
categories; small next to the model) so that it never ranks an unavailable item, and the scorer
that owns partition 0 of the user features writes it to Redis for the readers, who filter every
list they return with it (``streamrec/client.py``): a hidden item is gone from reads as soon as
the readers see the new catalog, without re-scoring anyone.
"""

from __future__ import annotations

import time

from streamrec.shared.catalog import ServingCatalog
from streamrec.shared.contracts import CatalogChange


class CatalogReplica:
    """The scorer's copy of the serving catalog, and when it last changed (to know when Redis needs it again)."""

    def __init__(self, catalog: ServingCatalog | None = None) -> None:
        self.catalog = catalog or ServingCatalog()
        self.changed_at = time.monotonic()  # dirty for Redis if newer than the last write

    def apply(self, change: CatalogChange, offset: int) -> None:
        """Apply the change read at ``offset`` of the catalog topic."""
        self.catalog.apply(change.item_id, change.record)
        self.catalog.offset = offset
        self.changed_at = time.monotonic()

    def unavailable(self, now: float | None = None) -> frozenset[str]:
        """Items that may not be served at ``now`` (hidden or expired); the same object until it changes."""
        return self.catalog.unavailable(now)

    def available(self, item_id: str, now: float) -> bool:
        """Whether ``item_id`` may be served at ``now``."""
        return item_id not in self.catalog.unavailable(now)
