"""What a read returns and the steps a read takes between its Redis round trips, without I/O.

The answers (:class:`Recommendations`, :class:`SimilarItems`, :class:`SessionRecommendations`) and
the filtering of one read (:class:`Read`, :class:`SessionRead`), shared by the blocking client
(services/api/reader.py) and its asyncio twin (services/api/async_reader.py), so that the two differ
only in how they wait for Redis. Hidden and expired items are left out by
services/api/read_filters.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from streamrec.api.read_filters import CatalogView, ReadFilter
from streamrec.shared.cached_list import CachedList
from streamrec.shared.events import resolve_item_id
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from streamrec.api.sessions import RankedSession

DEFAULT_N = 20
ReadSource = Literal["personal", "fallback", "mixed"]
Categories = Iterable[str | int] | str | None  # one category, several, or none (every category)
# A read path should fail fast rather than hang a caller while Redis is unreachable.
SOCKET_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Recommendations:
    """A user's ranked recommendations as read from Redis."""

    user_id: str
    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float  # epoch seconds when the scorer computed the list
    # "personal" (the user's own list), "fallback" (popular items), or "mixed": the user's own
    # items, then popular ones, because a filter left fewer than n of the user's own.
    source: ReadSource

    @classmethod
    def from_cached(cls, user_id: str, cached: CachedList, n: int | None = None) -> Recommendations:
        """The first ``n`` items of a stored list, for ``user_id``."""
        return cls(
            user_id=user_id,
            items=cached.items if n is None else cached.items[:n],
            model_version=cached.model_version,
            generated_at=cached.generated_at,
            source=cached.source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape: user_id, items [{item_id, score}], model_version, generated_at, source."""
        return {
            "user_id": self.user_id,
            "items": [{"item_id": item, "score": score} for item, score in self.items],
            "model_version": self.model_version,
            "generated_at": self.generated_at,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class SimilarItems:
    """An item's nearest items: the served model's (source "personal"), or a fallback (co-occurring
    or popular items, source "fallback")."""

    item_id: str
    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float
    source: ReadSource

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape: item_id, items [{item_id, score}], model_version, generated_at, source."""
        return {
            "item_id": self.item_id,
            **_response(self.items, self.model_version, self.generated_at, self.source),
        }


@dataclass(frozen=True, slots=True)
class SessionRecommendations:
    """Recommendations for an anonymous session (a list of recent items), scored on demand."""

    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float
    source: ReadSource  # "personal" (the model's), "fallback" (popular items) or "mixed" (both)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape: items [{item_id, score}], model_version, generated_at, source."""
        return _response(self.items, self.model_version, self.generated_at, self.source)


def _response(
    items: list[tuple[str, float]], model_version: str | None, generated_at: float, source: ReadSource
) -> dict[str, Any]:
    return {
        "items": [{"item_id": item, "score": score} for item, score in items],
        "model_version": model_version,
        "generated_at": generated_at,
        "source": source,
    }


def decode(user_id: str, raw: bytes | None, n: int, *, fallback: bool) -> Recommendations | None:
    """Turn a stored value into Recommendations (``fallback``: it is the popular list), unfiltered."""
    if raw is None:
        return None
    recs = Recommendations.from_cached(user_id, CachedList.decode(raw), n)
    if fallback and recs.source != "fallback":
        recs = Recommendations(recs.user_id, recs.items, recs.model_version, recs.generated_at, "fallback")
    return recs


def popular_keys(keys: RedisKeys, categories: Iterable[str]) -> list[str]:
    """The fallback of an item without similar items, in order: the popular items of its categories,
    then the global popular list."""
    return [*(keys.popular_in(category) for category in categories), keys.popular]


class SessionRead:
    """One session's answer between its Redis round trips (shared by the blocking and async clients):
    the model's ranking filtered, filled from popular lists when short (source "mixed"), or popular
    items alone without a ranking (source "fallback")."""

    def __init__(self, wanted: ReadFilter, view: CatalogView, ranked: RankedSession | None) -> None:
        self.wanted, self.view, self.ranked = wanted, view, ranked
        self.now = time.time()
        self.chosen = wanted.select(ranked.items if ranked else [], view.catalog, self.now)

    @property
    def complete(self) -> bool:
        """Whether the model's ranking gave ``n`` items (no fill needed)."""
        return len(self.chosen) == self.wanted.n

    def result(self, fill_values: list[bytes | None] | None = None) -> SessionRecommendations | None:
        """The answer; None without a ranking and without popular items."""
        popular = [CachedList.decode(raw) for raw in fill_values or () if raw is not None]
        items = self.chosen
        if popular:
            items = self.wanted.fill(items, [lst.items for lst in popular], self.view.catalog, self.now)
        ranked = self.ranked
        if (ranked is None or not self.chosen) and popular:
            return SessionRecommendations(items, None, popular[0].generated_at, "fallback")
        if ranked is None:
            return None
        source: ReadSource = "mixed" if len(items) > len(self.chosen) else "personal"
        return SessionRecommendations(items, ranked.model_version, ranked.generated_at, source)


def session_filter(
    items: Iterable[str | int], n: int, categories: Categories, exclude: Iterable[str | int] | None
) -> tuple[list[str], ReadFilter]:
    """(history, filter) of a session request: its items never come back; ids normalised."""
    history = [resolve_item_id(item) for item in items]
    return history, ReadFilter.of(n, categories, [*history, *(exclude or ())])


class Read:
    """One filtered read, between its Redis round trips (shared by the blocking and async clients)."""

    def __init__(self, user: str, wanted: ReadFilter, view: CatalogView, raw: bytes | None) -> None:
        self.user, self.wanted, self.view = user, wanted, view
        self.now = time.time()
        self.cached = None if raw is None else CachedList.decode(raw)
        own = [] if self.cached is None else self.cached.items
        self.chosen = wanted.select(own, view.catalog, self.now)

    @property
    def complete(self) -> bool:
        """Whether the user's own list gave ``n`` items (no fill needed)."""
        return len(self.chosen) == self.wanted.n

    def result(self, fill_values: list[bytes | None] | None = None) -> Recommendations | None:
        """The answer, filled from the popular lists read (``fill_values``) if it is short; None if
        there is nothing to answer with (no list for the user, no popular list yet)."""
        popular = [CachedList.decode(raw) for raw in fill_values or () if raw is not None]
        items = self.chosen
        if popular:
            items = self.wanted.fill(items, [lst.items for lst in popular], self.view.catalog, self.now)
        own = self.cached
        if own is None:
            if not popular:
                return None
            return Recommendations(self.user, items, None, popular[0].generated_at, "fallback")
        source: ReadSource = own.source
        if len(items) > len(self.chosen):  # filled: the popular items follow the user's own
            source = "mixed" if self.chosen and own.source == "personal" else "fallback"
        return Recommendations(self.user, items, own.model_version, own.generated_at, source)


def connection_target(
    redis_url: str | None, prefix: str | None, settings: Settings | None
) -> tuple[Settings, str, RedisKeys]:
    """Settings (for the TLS files), URL and key layout to read: explicit arguments first, then
    settings, then the environment."""
    settings = settings or load_settings()
    redis_url = redis_url or settings.redis_url
    if redis_url is None:
        raise ConfigError("no Redis URL: pass redis_url or set STREAMREC_REDIS_URL")
    return settings, redis_url, RedisKeys(prefix or settings.redis_prefix)
