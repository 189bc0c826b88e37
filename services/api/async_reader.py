"""Reading recommendations from Redis: what the scorer wrote, filtered for the reader (asyncio).

The asyncio twin of :class:`~streamrec.api.reader.RecommendationClient` (services/api/reader.py):
the HTTP API's read endpoints (services/api/app.py) and asyncio applications (``streamrec.client``)
read with it. It reads and filters like its twin, with the same steps without I/O
(services/api/read_results.py); only the waiting for Redis differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamrec.api.read_filters import CatalogView, ReadFilter
from streamrec.api.read_results import (
    DEFAULT_N,
    SOCKET_TIMEOUT_SECONDS,
    Categories,
    Read,
    Recommendations,
    SessionRead,
    SessionRecommendations,
    SimilarItems,
    connection_target,
    popular_keys,
    session_filter,
)
from streamrec.shared.cached_list import CachedList
from streamrec.shared.events import resolve_item_id, resolve_user_id
from streamrec.shared.redis_connection import connect_async, explained
from streamrec.shared.settings import Settings

if TYPE_CHECKING:
    from streamrec.api.sessions import SessionScorer


class AsyncRecommendationClient:
    """The asyncio twin of :class:`RecommendationClient` (same arguments, awaitable methods)."""

    def __init__(
        self, redis_url: str | None = None, prefix: str | None = None, settings: Settings | None = None
    ) -> None:
        settings, self._url, self.keys = connection_target(redis_url, prefix, settings)
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
            read = Read(user, wanted, self._view, await self._redis.get(self.keys.recs(user)))
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
            for raw in await self._get_all(popular_keys(self.keys, catalog.categories_of(item))):
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
        history, wanted = session_filter(items, n, categories, exclude)
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
            read = SessionRead(wanted, self._view, sessions.rank(history))
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
