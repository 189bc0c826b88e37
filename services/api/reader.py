"""Reading recommendations from Redis: what the scorer wrote, filtered for the reader.

The client applications import (:class:`RecommendationClient`, :class:`AsyncRecommendationClient`,
from ``streamrec.client``) and the HTTP API's read endpoints (services/api/app.py, with the async
client) are this module. Both read what the scorer writes (the key layout is in
``streamrec.shared.redis_keys``, the list format in ``streamrec.shared.cached_list``), and return
no item the catalog hides or that expired (services/api/read_filters.py). Sessions are scored in
the reader's process with the served model (services/api/sessions.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from streamrec.api.read_filters import CatalogView, ReadFilter
from streamrec.shared.cached_list import CachedList
from streamrec.shared.events import resolve_item_id, resolve_user_id
from streamrec.shared.redis_connection import connect, connect_async, explained
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from streamrec.api.sessions import RankedSession, SessionScorer

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


def _popular_keys(keys: RedisKeys, categories: Iterable[str]) -> list[str]:
    """The fallback of an item without similar items, in order: the popular items of its categories,
    then the global popular list."""
    return [*(keys.popular_in(category) for category in categories), keys.popular]


class _SessionRead:
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


def _session_filter(
    items: Iterable[str | int], n: int, categories: Categories, exclude: Iterable[str | int] | None
) -> tuple[list[str], ReadFilter]:
    """(history, filter) of a session request: its items never come back; ids normalised."""
    history = [resolve_item_id(item) for item in items]
    return history, ReadFilter.of(n, categories, [*history, *(exclude or ())])


class _Read:
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


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")


def _connection_target(
    redis_url: str | None, prefix: str | None, settings: Settings | None
) -> tuple[Settings, str, RedisKeys]:
    """Settings (for the TLS files), URL and key layout to read: explicit arguments first, then
    settings, then the environment."""
    settings = settings or load_settings()
    redis_url = redis_url or settings.redis_url
    if redis_url is None:
        raise ConfigError("no Redis URL: pass redis_url or set STREAMREC_REDIS_URL")
    return settings, redis_url, RedisKeys(prefix or settings.redis_prefix)


class RecommendationClient:
    """Reads recommendations from Redis (blocking; see :class:`AsyncRecommendationClient`).

    ``redis_url`` defaults to ``settings.redis_url`` (``STREAMREC_REDIS_URL`` if no settings are
    given), ``prefix`` to ``settings.redis_prefix`` (``"streamrec"`` unless configured). The URL may
    carry a user and password (``redis://user:password@host:6379/0``); ``rediss://`` uses TLS with
    the ``STREAMREC_REDIS_TLS_*`` files of the settings.

    Refused credentials raise :class:`~streamrec.shared.redis_connection.RedisCredentialsError` at
    once (a ``redis.AuthenticationError`` with a clear message); a missing ACL permission raises
    ``RedisPermissionError``. Neither message contains the password.
    """

    def __init__(
        self, redis_url: str | None = None, prefix: str | None = None, settings: Settings | None = None
    ) -> None:
        settings, self._url, self.keys = _connection_target(redis_url, prefix, settings)
        self._settings = settings
        self._session_scorer: SessionScorer | None = None  # loaded by the first recommend_session
        self._explained = explained(self._url)  # stateless: one instance for every call
        self._view = CatalogView()
        self._redis = connect(
            settings,
            url=self._url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )

    def get(
        self,
        user_id: str | int,
        n: int = DEFAULT_N,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> Recommendations | None:
        """The user's top ``n``; the popular list (source "fallback") if the user has none; else None.

        Hidden and expired items are never returned. With ``categories``, only items in one of
        them; ``exclude``: item ids never to return. When the user's list holds fewer than ``n``
        such items, the rest come from the popular items of those categories (source "mixed").

        Raises ValueError for an invalid user id, category or n < 1, and redis.RedisError if Redis fails.
        """
        wanted = ReadFilter.of(n, categories, exclude)
        user = resolve_user_id(user_id)
        with self._explained:
            self._refresh_catalog()
            read = _Read(user, wanted, self._view, self._redis.get(self.keys.recs(user)))
            if read.complete:
                return read.result()
            return read.result(self._get_all(wanted.fill_keys(self.keys)))

    def filter_items(
        self,
        items: list[tuple[str, float]],
        n: int,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> list[tuple[str, float]]:
        """The first ``n`` of ``items`` a read may return: not hidden or expired, in one of
        ``categories`` (if given), not in ``exclude``."""
        wanted = ReadFilter.of(n, categories, exclude)
        with self._explained:
            self._refresh_catalog()
        return wanted.select(items, self._view.catalog, time.time())

    def categories_of(self, item_id: str) -> list[str]:
        """The item's categories in the catalog (empty if it has none)."""
        with self._explained:
            self._refresh_catalog()
        return list(self._view.catalog.categories_of(item_id))

    def _get_all(self, keys: list[str]) -> list[bytes | None]:
        """GET of each key in one round trip (a pipeline, not MGET: readers need only +get)."""
        if len(keys) == 1:
            return [self._redis.get(keys[0])]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()

    def _refresh_catalog(self) -> None:
        """Re-read the serving catalog if its version changed (checked at most every half second)."""
        view = self._view
        if view.due() and view.checked(version := self._catalog_version()):
            view.load(version, self._redis.get(self.keys.catalog))

    def _catalog_version(self) -> bytes | None:
        """The catalog's version; under its earlier key if a scorer of an earlier version wrote it."""
        version = self._redis.get(self.keys.catalog_version)
        return self._redis.get(self.keys.legacy_catalog_version) if version is None else version

    def model_version(self) -> str | None:
        """The model version the scorer serves, or None before the first model."""
        with self._explained:
            raw = self._redis.get(self.keys.model)
        return None if raw is None else raw.decode()

    def similar(
        self, item_id: str | int, n: int = DEFAULT_N, categories: Categories = None
    ) -> SimilarItems | None:
        """The item's ``n`` nearest items in the served model (hidden and expired items left out; only
        items of ``categories`` if given). An item without a list of its own, or none left after
        filtering, gets the popular items of its categories, then the global popular list (source
        "fallback"); None if there is nothing at all.

        Raises ValueError for an invalid item id, category or n < 1, and redis.RedisError if Redis fails.
        """
        item = resolve_item_id(item_id)
        wanted = ReadFilter.of(n, categories, [item])
        with self._explained:
            self._refresh_catalog()
            catalog, now = self._view.catalog, time.time()
            raw = self._redis.get(self.keys.similar(item))
            if raw is not None:
                own = CachedList.decode(raw)
                if items := wanted.select(own.items, catalog, now):
                    return SimilarItems(item, items, own.model_version, own.generated_at, own.source)
            for raw in self._get_all(_popular_keys(self.keys, catalog.categories_of(item))):
                popular = None if raw is None else CachedList.decode(raw)
                if popular is not None and (items := wanted.select(popular.items, catalog, now)):
                    return SimilarItems(item, items, None, popular.generated_at, "fallback")
        return None

    def recommend_session(
        self,
        items: Iterable[str | int],
        n: int = DEFAULT_N,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> SessionRecommendations | None:
        """Recommendations for an anonymous session: ``items`` are its recent items, oldest first.

        Scored in this process with the served ONNX model, loaded lazily from ``settings.model_dir``
        and swapped when another version is served (:class:`~streamrec.api.sessions.SessionScorer`).
        Filtered like :meth:`get`: the session's items and ``exclude`` never come back, hidden and
        expired items neither, only items of ``categories`` if given, a short list filled with
        popular items (source "mixed"). With no model or no item the model knows: the popular items
        (source "fallback"); None if there are none either. Raises ValueError for an invalid id or n < 1.
        """
        history, wanted = _session_filter(items, n, categories, exclude)
        sessions = self._sessions()
        with self._explained:
            if sessions.due():
                sessions.refresh(self.model_version(), wait=sessions.model is None)
            self._refresh_catalog()
            read = _SessionRead(wanted, self._view, sessions.rank(history))
            if read.complete:
                return read.result()
            return read.result(self._get_all(wanted.fill_keys(self.keys)))

    def _sessions(self) -> SessionScorer:
        if self._session_scorer is None:
            from streamrec.api.sessions import SessionScorer  # onnxruntime only for the callers that score

            self._session_scorer = SessionScorer(self._settings)
        return self._session_scorer

    def ping(self) -> bool:
        """True if Redis answers (raises redis.RedisError if it does not)."""
        with self._explained:
            return bool(self._redis.ping())

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRecommendationClient:
    """The asyncio twin of :class:`RecommendationClient` (same arguments, awaitable methods)."""

    def __init__(
        self, redis_url: str | None = None, prefix: str | None = None, settings: Settings | None = None
    ) -> None:
        settings, self._url, self.keys = _connection_target(redis_url, prefix, settings)
        self._settings = settings
        self._session_scorer: SessionScorer | None = None  # loaded by the first recommend_session
        self._explained = explained(self._url)  # stateless: one instance for every call
        self._view = CatalogView()
        self._redis = connect_async(
            settings,
            url=self._url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )

    async def get(
        self,
        user_id: str | int,
        n: int = DEFAULT_N,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> Recommendations | None:
        """The user's top ``n``, filtered and filled like :meth:`RecommendationClient.get`."""
        wanted = ReadFilter.of(n, categories, exclude)
        user = resolve_user_id(user_id)
        with self._explained:
            await self._refresh_catalog()
            read = _Read(user, wanted, self._view, await self._redis.get(self.keys.recs(user)))
            if read.complete:
                return read.result()
            return read.result(await self._get_all(wanted.fill_keys(self.keys)))

    async def filter_items(
        self,
        items: list[tuple[str, float]],
        n: int,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> list[tuple[str, float]]:
        """See :meth:`RecommendationClient.filter_items`."""
        wanted = ReadFilter.of(n, categories, exclude)
        with self._explained:
            await self._refresh_catalog()
        return wanted.select(items, self._view.catalog, time.time())

    async def categories_of(self, item_id: str) -> list[str]:
        """The item's categories in the catalog (empty if it has none)."""
        with self._explained:
            await self._refresh_catalog()
        return list(self._view.catalog.categories_of(item_id))

    async def _get_all(self, keys: list[str]) -> list[bytes | None]:
        if len(keys) == 1:
            return [await self._redis.get(keys[0])]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return await pipe.execute()

    async def _refresh_catalog(self) -> None:
        view = self._view
        if view.due() and view.checked(version := await self._catalog_version()):
            view.load(version, await self._redis.get(self.keys.catalog))

    async def _catalog_version(self) -> bytes | None:
        version = await self._redis.get(self.keys.catalog_version)
        return await self._redis.get(self.keys.legacy_catalog_version) if version is None else version

    async def model_version(self) -> str | None:
        """The model version the scorer serves, or None before the first model."""
        with self._explained:
            raw = await self._redis.get(self.keys.model)
        return None if raw is None else raw.decode()

    async def similar(
        self, item_id: str | int, n: int = DEFAULT_N, categories: Categories = None
    ) -> SimilarItems | None:
        """The item's ``n`` nearest items (see :meth:`RecommendationClient.similar`)."""
        item = resolve_item_id(item_id)
        wanted = ReadFilter.of(n, categories, [item])
        with self._explained:
            await self._refresh_catalog()
            catalog, now = self._view.catalog, time.time()
            raw = await self._redis.get(self.keys.similar(item))
            if raw is not None:
                own = CachedList.decode(raw)
                if items := wanted.select(own.items, catalog, now):
                    return SimilarItems(item, items, own.model_version, own.generated_at, own.source)
            for raw in await self._get_all(_popular_keys(self.keys, catalog.categories_of(item))):
                popular = None if raw is None else CachedList.decode(raw)
                if popular is not None and (items := wanted.select(popular.items, catalog, now)):
                    return SimilarItems(item, items, None, popular.generated_at, "fallback")
        return None

    async def recommend_session(
        self,
        items: Iterable[str | int],
        n: int = DEFAULT_N,
        categories: Categories = None,
        exclude: Iterable[str | int] | None = None,
    ) -> SessionRecommendations | None:
        """Recommendations for an anonymous session (see :meth:`RecommendationClient.recommend_session`).

        The inference runs on the calling thread (a millisecond: it measured faster than a hop to a
        worker thread); a new model is loaded in a background thread, the first one awaited."""
        history, wanted = _session_filter(items, n, categories, exclude)
        if self._session_scorer is None:
            from streamrec.api.sessions import SessionScorer  # onnxruntime only for the callers that score

            self._session_scorer = SessionScorer(self._settings)
        sessions = self._session_scorer
        with self._explained:
            if sessions.due():
                served = await self.model_version()
                if sessions.model is None:
                    await asyncio.to_thread(sessions.refresh, served, True)
                else:
                    sessions.refresh(served)
            await self._refresh_catalog()
            read = _SessionRead(wanted, self._view, sessions.rank(history))
            if read.complete:
                return read.result()
            return read.result(await self._get_all(wanted.fill_keys(self.keys)))

    async def ping(self) -> bool:
        """True if Redis answers (raises redis.RedisError if it does not)."""
        with self._explained:
            return bool(await self._redis.ping())

    async def close(self) -> None:
        """Close the connections."""
        await self._redis.aclose()

    async def __aenter__(self) -> AsyncRecommendationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
