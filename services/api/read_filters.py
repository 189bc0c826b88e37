"""Read-time filters: what a reader may return of a stored list, and how a short answer is filled.

Every list a client returns goes through :class:`ReadFilter`: items the catalog hides or that
expired are dropped (always), then those outside the requested categories and the ones the caller
excludes, and the first ``n`` that remain are returned. When fewer than ``n`` remain, the answer is
filled from the popular items of the requested categories (of everything, without categories),
and its source says so (``"mixed"``).

:class:`CatalogView` is a reader's copy of the serving catalog the scorer writes to Redis
(``RedisKeys.catalog``). A reader checks the catalog's version at most every ``check_seconds``
and re-reads the catalog only when the version changed, so a plain read stays one GET.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from dataclasses import dataclass

from streamrec.shared.catalog import ServingCatalog
from streamrec.shared.events import normalise_id
from streamrec.shared.redis_keys import RedisKeys

CATALOG_CHECK_SECONDS = 0.5  # a hidden item is gone from reads at most this long after Redis has it


class CatalogView:
    """A reader's copy of the serving catalog, and when its version was last checked."""

    def __init__(self, check_seconds: float = CATALOG_CHECK_SECONDS) -> None:
        self.check_seconds = check_seconds
        self.catalog = ServingCatalog()
        self.version: bytes | None = None
        self._checked_at = -float("inf")  # monotonic

    def due(self) -> bool:
        """Whether the version should be checked now."""
        return time.monotonic() - self._checked_at >= self.check_seconds

    def checked(self, version: bytes | None) -> bool:
        """Record a version check; True if the catalog must be read again."""
        self._checked_at = time.monotonic()
        return version != self.version

    def load(self, version: bytes | None, raw: bytes | None) -> None:
        """Take the catalog read for ``version`` (None: there is none yet)."""
        self.catalog = ServingCatalog() if raw is None else ServingCatalog.decode(raw)
        self.version = version


def _names(values: Iterable[str | int] | str | None, what: str) -> frozenset[str]:
    if values is None:
        return frozenset()
    if isinstance(values, str | int):
        values = [values]
    names = set()
    for value in values:
        name = normalise_id(value)
        if name is None:
            raise ValueError(
                f"invalid {what} {value!r}: empty, longer than 256 characters or control characters"
            )
        names.add(name)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class ReadFilter:
    """What one read asks for: ``n`` items, in any of ``categories`` (all if empty), none of ``exclude``."""

    n: int
    categories: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        n: int,
        categories: Iterable[str | int] | str | None = None,
        exclude: Iterable[str | int] | str | None = None,
    ) -> ReadFilter:
        """A filter from a caller's arguments (ids normalised like ingest's); ValueError if invalid."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not categories and not exclude:
            return cls(n)
        return cls(n, _names(categories, "category"), _names(exclude, "item id"))

    def select(
        self,
        items: list[tuple[str, float]],
        catalog: ServingCatalog,
        now: float,
        taken: Iterable[str] = (),
        limit: int | None = None,
    ) -> list[tuple[str, float]]:
        """The first items (at most ``limit``, default ``n``) that may be returned, skipping ``taken``
        and any repeat of an item already chosen."""
        limit = self.n if limit is None else limit
        if limit <= 0:
            return []
        unavailable = catalog.unavailable(now)
        if not (self.categories or self.exclude or taken):  # a plain read: one pass, no set to build
            return [row for row in items if row[0] not in unavailable][:limit]
        skip = set(self.exclude).union(taken)
        allowed = catalog.items_in(self.categories) if self.categories else None
        chosen: list[tuple[str, float]] = []
        for item, score in items:
            if item in skip or item in unavailable or (allowed is not None and item not in allowed):
                continue
            chosen.append((item, score))
            if len(chosen) == limit:
                break
            skip.add(item)
        return chosen

    def fill_keys(self, keys: RedisKeys) -> list[str]:
        """The popular lists a short answer is filled from: the categories', or the global one."""
        if not self.categories:
            return [keys.popular]
        return [keys.popular_in(category) for category in sorted(self.categories)]

    def fill(
        self,
        chosen: list[tuple[str, float]],
        lists: list[list[tuple[str, float]]],
        catalog: ServingCatalog,
        now: float,
    ) -> list[tuple[str, float]]:
        """``chosen`` filled up to ``n`` from popular ``lists`` (best score first over the lists)."""
        # Each list is best first, and categories' scores are comparable (one time base): merged by score.
        merged = heapq.merge(*lists, key=lambda row: -row[1])
        taken = {item for item, _ in chosen}
        return chosen + self.select(list(merged), catalog, now, taken, limit=self.n - len(chosen))
