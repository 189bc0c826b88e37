"""The scorer's replica of the serving catalog, followed from ``topic_catalog``: what it may serve.

Every scorer keeps the whole :class:`~streamrec.shared.catalog.ServingCatalog` (availability and
categories; small next to the model) so that it never ranks an unavailable item, and the scorer
that owns partition 0 of the user features writes it to Redis for the readers, who filter every
list they return with it (``streamrec/client.py``): a hidden item is gone from reads as soon as
the readers see the new catalog, without re-scoring anyone (:class:`CatalogPublisher`).
"""

from __future__ import annotations

import time

from streamrec.scorer.redis_writer import RedisWriter
from streamrec.shared.catalog import ServingCatalog
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import CatalogChange
from streamrec.shared.redis_keys import RedisKeys

log = get_logger(__name__)

CATALOG_WRITE_SECONDS = 0.2  # a changed catalog is written to Redis at most this often


class CatalogReplica:
    """The scorer's copy of the serving catalog, and when it last changed (to know when Redis needs it again)."""

    def __init__(self, catalog: ServingCatalog | None = None) -> None:
        self.catalog = catalog or ServingCatalog()
        self.changed_at = time.monotonic()  # dirty for Redis if newer than the last write

    def replace(self, catalog: ServingCatalog) -> None:
        """Serve ``catalog`` from now on (the one read back from Redis at start-up)."""
        self.catalog = catalog
        self.changed_at = time.monotonic()

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


class CatalogPublisher:
    """Loads the replica from Redis at start-up and writes it back there when it changed."""

    def __init__(self, replica: CatalogReplica, writer: RedisWriter, keys: RedisKeys) -> None:
        self.replica = replica
        self.writer = writer
        self.keys = keys
        self.written_at = 0.0  # monotonic; the replica is dirty if it changed since

    def load(self) -> None:
        """Start from the serving catalog in Redis (written by whichever scorer wrote last)."""
        raw = self.writer.get("read the serving catalog", self.keys.catalog)
        if raw is None:
            return
        try:
            self.replica.replace(ServingCatalog.decode(raw))
        except ValueError as exc:  # rebuilt from the topic's beginning, and rewritten
            log.error(
                "unreadable serving catalog in Redis: reading the catalog topic again",
                extra={"error": str(exc)},
            )
            return
        self.written_at = time.monotonic()
        log.info(
            "serving catalog loaded",
            extra={"items": len(self.replica.catalog), "offset": self.replica.catalog.offset},
        )

    def write_if_due(self, owns_partition_0: bool) -> None:
        """Write the serving catalog to Redis if it changed (at most every CATALOG_WRITE_SECONDS),
        when this scorer owns partition 0 of the user features: one writer, and readers see the
        catalog, then its version."""
        now = time.monotonic()
        if self.replica.changed_at <= self.written_at or not owns_partition_0:
            return
        if now - self.written_at < CATALOG_WRITE_SECONDS:
            return
        version = str(self.replica.catalog.offset)
        values: dict[str, bytes | str] = {
            self.keys.catalog: self.replica.catalog.encode(),
            self.keys.catalog_version: version,  # same slot as the catalog: after it
            self.keys.legacy_catalog_version: version,  # for readers of earlier versions
        }
        self.writer.set_many("write the serving catalog", values)
        self.written_at = now
