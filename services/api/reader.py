"""Reading recommendations from Redis: what the scorer wrote, filtered for the reader (blocking).

The client applications import (:class:`RecommendationClient`, and its asyncio twin
:class:`~streamrec.api.async_reader.AsyncRecommendationClient`, from ``streamrec.client``) and the
HTTP API's read endpoints (services/api/app.py, with the async client) read with this code. Both read
what the scorer writes (the key layout is in ``streamrec.shared.redis_keys``, the list format in
``streamrec.shared.cached_list``), and return no item the catalog hides or that expired
(services/api/read_filters.py); the answers and the steps of a read without I/O are in
services/api/read_results.py. Sessions are scored in the reader's process with the served model
(services/api/sessions.py).
"""

from __future__ import annotations

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
from streamrec.shared.redis_connection import connect, explained
from streamrec.shared.settings import Settings

if TYPE_CHECKING:
    from streamrec.api.sessions import SessionScorer


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
        settings, self._url, self.keys = connection_target(redis_url, prefix, settings)
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
            read = Read(user, wanted, self._view, self._redis.get(self.keys.recs(user)))
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
            for raw in self._get_all(popular_keys(self.keys, catalog.categories_of(item))):
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
        history, wanted = session_filter(items, n, categories, exclude)
        sessions = self._sessions()
        with self._explained:
            if sessions.due():
                sessions.refresh(self.model_version(), wait=sessions.model is None)
            self._refresh_catalog()
            read = SessionRead(wanted, self._view, sessions.rank(history))
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
