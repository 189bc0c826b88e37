"""What the scorer may serve: the serving catalog, followed from ``topic_catalog``.

Every scorer keeps the whole :class:`~streamrec.shared.catalog.ServingCatalog` (availability and
categories; small next to the model) so that it never ranks an unavailable item, and the scorer
that owns partition 0 of the user features writes it to Redis for the readers, who filter every
list they return with it (``streamrec/client.py``): a hidden item is gone from reads as soon as
the readers see the new catalog, without re-scoring anyone.
"""

from __future__ import annotations

import math
import time

from ..shared.catalog import ServingCatalog
from ..shared.contracts import CatalogChange


class ScorerCatalog:
    """The serving catalog and the set of items unavailable now, recomputed only when it changes."""

    def __init__(self, catalog: ServingCatalog | None = None) -> None:
        self.catalog = catalog or ServingCatalog()
        self.changed_at = time.monotonic()  # when the catalog last changed (dirty for Redis if newer)
        self._unavailable: frozenset[str] = frozenset()
        self._valid_until = -math.inf  # epoch s: when the next expiry makes the cached set stale

    def apply(self, change: CatalogChange, offset: int) -> None:
        """Apply the change read at ``offset`` of the catalog topic."""
        self.catalog.apply(change.item_id, change.record)
        self.catalog.offset = offset
        self.changed_at = time.monotonic()
        self._valid_until = -math.inf

    def unavailable(self, now: float | None = None) -> frozenset[str]:
        """Items that may not be served at ``now`` (hidden or expired); the same object until it changes."""
        now = time.time() if now is None else now
        if now >= self._valid_until:
            self._unavailable = frozenset(self.catalog.unavailable(now))
            self._valid_until = self.catalog.next_expiry(now) or math.inf
        return self._unavailable

    def available(self, item_id: str, now: float) -> bool:
        """Whether ``item_id`` may be served at ``now``."""
        return item_id not in self.unavailable(now)
