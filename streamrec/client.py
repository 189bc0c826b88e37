"""Read a user's recommendations from Redis: the small client applications import.

::

    from streamrec.client import RecommendationClient

    client = RecommendationClient("redis://localhost:6379/0")
    recs = client.get("user-42", n=10)       # one GET; popular items if the user is unknown
    if recs is not None:
        print(recs.source, recs.items)        # [("sku-9", 3.1), ...], best first
    similar = client.similar("sku-9", n=5)   # the item's nearest items (see RedisKeys.similar)
    session = client.recommend_session(["sku-9", "sku-3"], n=10)  # scored in-process (ONNX)

:class:`AsyncRecommendationClient` is the same for asyncio (the HTTP API uses it). Both read what
the scorer writes (the key layout and JSON format are in ``streamrec.shared.contracts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .shared.contracts import CachedList, RedisKeys, Source
from .shared.events import normalise_id
from .shared.redis_connection import connect, connect_async, explained
from .shared.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from .api.sessions import SessionScorer

DEFAULT_N = 20
# A read path should fail fast rather than hang a caller while Redis is unreachable.
SOCKET_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Recommendations:
    """A user's ranked recommendations as read from Redis."""

    user_id: str
    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float  # epoch seconds when the scorer computed the list
    source: Source  # "personal" (the user's own list) or "fallback" (popular items)

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
        cached = CachedList(self.items, self.model_version, self.generated_at, self.source)
        return cached.to_response(self.user_id)


@dataclass(frozen=True, slots=True)
class SimilarItems:
    """An item's nearest items: the served model's (source "personal"), or a fallback (co-occurring
    or popular items, source "fallback")."""

    item_id: str
    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float
    source: Source

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape: item_id, items [{item_id, score}], model_version, generated_at, source."""
        response = CachedList(self.items, self.model_version, self.generated_at, self.source).to_response("")
        del response["user_id"]
        return {"item_id": self.item_id, **response}


@dataclass(frozen=True, slots=True)
class SessionRecommendations:
    """Recommendations for an anonymous session (a list of recent items), scored on demand."""

    items: list[tuple[str, float]]  # (item_id, score), best first
    model_version: str | None
    generated_at: float
    source: Source  # "personal" (the model's) or "fallback" (popular items)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape: items [{item_id, score}], model_version, generated_at, source."""
        response = CachedList(self.items, self.model_version, self.generated_at, self.source).to_response("")
        del response["user_id"]
        return response


def resolve_user_id(user_id: str | int) -> str:
    """Normalise a user id like ingest does (``42`` and ``" 42 "`` are user ``"42"``).

    Raises ValueError if it can never be a user id (empty, too long, control characters).
    """
    normalised = normalise_id(user_id)
    if normalised is None:
        raise ValueError(
            f"invalid user id {user_id!r}: empty, longer than 256 characters or control characters"
        )
    return normalised


def decode(user_id: str, raw: bytes | None, n: int, *, fallback: bool) -> Recommendations | None:
    """Turn a stored value into Recommendations (``fallback``: it is the popular list)."""
    if raw is None:
        return None
    recs = Recommendations.from_cached(user_id, CachedList.decode(raw), n)
    if fallback and recs.source != "fallback":
        recs = Recommendations(recs.user_id, recs.items, recs.model_version, recs.generated_at, "fallback")
    return recs


def resolve_item_id(item_id: str | int) -> str:
    """Normalise an item id like ingest does; raises ValueError if it can never be an item id."""
    normalised = normalise_id(item_id)
    if normalised is None:
        raise ValueError(
            f"invalid item id {item_id!r}: empty, longer than 256 characters or control characters"
        )
    return normalised


def _categories(categories: str | Iterable[str] | None) -> list[str] | None:
    """None (no filter) or the list of categories an item may be in."""
    if categories is None:
        return None
    return [categories] if isinstance(categories, str) else list(categories)


def _popular_keys(keys: RedisKeys, categories: list[str]) -> list[str]:
    """The fallback of an item without similar items, in order: the popular items of its categories,
    then the global popular list."""
    return [*(keys.popular_in(category) for category in categories), keys.popular]


def _session_request(
    items: Iterable[str | int], exclude: Iterable[str | int] | None, categories: str | Iterable[str] | None
) -> tuple[list[str], list[str], list[str] | None]:
    """(history, items never to return, category filter) of a session request, ids normalised."""
    history = [resolve_item_id(item) for item in items]
    return history, [*history, *(resolve_item_id(item) for item in exclude or ())], _categories(categories)


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
        self._redis = connect(
            settings,
            url=self._url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )

    def get(self, user_id: str | int, n: int = DEFAULT_N) -> Recommendations | None:
        """The user's top ``n``; the popular list (source "fallback") if the user has none; else None.

        Raises ValueError for an invalid user id or n < 1, and redis.RedisError if Redis fails.
        """
        _check_n(n)
        user = resolve_user_id(user_id)
        with self._explained:
            personal = decode(user, self._redis.get(self.keys.recs(user)), n, fallback=False)
            if personal is not None:
                return personal
            return decode(user, self._redis.get(self.keys.popular), n, fallback=True)

    def model_version(self) -> str | None:
        """The model version the scorer serves, or None before the first model."""
        with self._explained:
            raw = self._redis.get(self.keys.model)
        return None if raw is None else raw.decode()

    def similar(
        self, item_id: str | int, n: int = DEFAULT_N, categories: str | Iterable[str] | None = None
    ) -> SimilarItems | None:
        """The item's ``n`` nearest items in the served model (hidden items left out; only items of
        ``categories`` if given). An item without a list of its own, or none left after filtering,
        gets the popular items of its categories, then the global popular list (source "fallback");
        None if there is nothing at all.

        Raises ValueError for an invalid item id or n < 1, and redis.RedisError if Redis fails.
        """
        _check_n(n)
        item, wanted = resolve_item_id(item_id), _categories(categories)
        with self._explained:
            raw = self._redis.get(self.keys.similar(item))
            if raw is not None:
                cached = CachedList.decode(raw)
                if items := self.filter_items(cached.items, n, categories=wanted, exclude=[item]):
                    return SimilarItems(item, items, cached.model_version, cached.generated_at, cached.source)
            for key in _popular_keys(self.keys, self.categories_of(item)):
                raw = self._redis.get(key)
                if raw is not None:
                    cached = CachedList.decode(raw)
                    if items := self.filter_items(cached.items, n, categories=wanted, exclude=[item]):
                        return SimilarItems(item, items, None, cached.generated_at, "fallback")
        return None

    def recommend_session(
        self,
        items: Iterable[str | int],
        n: int = DEFAULT_N,
        categories: str | Iterable[str] | None = None,
        exclude: Iterable[str | int] | None = None,
    ) -> SessionRecommendations | None:
        """Recommendations for an anonymous session: ``items`` are its recent items, oldest first.

        Scored in this process with the served ONNX model, loaded lazily from ``settings.model_dir``
        and swapped when another version is served (:class:`~streamrec.api.sessions.SessionScorer`).
        The session's items and ``exclude`` never come back; only items of ``categories`` if given.
        With no model or no item the model knows: the popular items (source "fallback"); None if
        there are none either. Raises ValueError for an invalid id or n < 1.
        """
        _check_n(n)
        history, dropped, wanted = _session_request(items, exclude, categories)
        sessions = self._sessions()
        with self._explained:
            if sessions.due():
                sessions.refresh(self.model_version(), wait=sessions.model is None)
            ranked = sessions.rank(history)
            if ranked is not None and (
                kept := self.filter_items(ranked.items, n, categories=wanted, exclude=dropped)
            ):
                return SessionRecommendations(kept, ranked.model_version, ranked.generated_at, "personal")
            raw = self._redis.get(self.keys.popular)
            if raw is None:
                return None
            cached = CachedList.decode(raw)
            kept = self.filter_items(cached.items, n, categories=wanted, exclude=dropped)
            return SessionRecommendations(kept, None, cached.generated_at, "fallback")

    def _sessions(self) -> SessionScorer:
        if self._session_scorer is None:
            from .api.sessions import SessionScorer  # onnxruntime only for the callers that score

            self._session_scorer = SessionScorer(self._settings)
        return self._session_scorer

    # HOOK(catalog): the team lead's catalog filter replaces these two stubs at the merge with main.
    def filter_items(
        self,
        items: list[tuple[str, float]],
        n: int,
        categories: list[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> list[tuple[str, float]]:
        """At most ``n`` of ``items`` without ``exclude`` (stub until the catalog lands)."""
        dropped = set(exclude or ())
        return [(item, score) for item, score in items if item not in dropped][:n]

    def categories_of(self, item_id: str) -> list[str]:
        """The item's categories (stub until the catalog lands)."""
        return []

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
        self._redis = connect_async(
            settings,
            url=self._url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )

    async def get(self, user_id: str | int, n: int = DEFAULT_N) -> Recommendations | None:
        """The user's top ``n``; the popular list (source "fallback") if the user has none; else None."""
        _check_n(n)
        user = resolve_user_id(user_id)
        with self._explained:
            personal = decode(user, await self._redis.get(self.keys.recs(user)), n, fallback=False)
            if personal is not None:
                return personal
            return decode(user, await self._redis.get(self.keys.popular), n, fallback=True)

    async def model_version(self) -> str | None:
        """The model version the scorer serves, or None before the first model."""
        with self._explained:
            raw = await self._redis.get(self.keys.model)
        return None if raw is None else raw.decode()

    async def similar(
        self, item_id: str | int, n: int = DEFAULT_N, categories: str | Iterable[str] | None = None
    ) -> SimilarItems | None:
        """The item's ``n`` nearest items (see :meth:`RecommendationClient.similar`)."""
        _check_n(n)
        item, wanted = resolve_item_id(item_id), _categories(categories)
        with self._explained:
            raw = await self._redis.get(self.keys.similar(item))
            if raw is not None:
                cached = CachedList.decode(raw)
                if items := await self.filter_items(cached.items, n, categories=wanted, exclude=[item]):
                    return SimilarItems(item, items, cached.model_version, cached.generated_at, cached.source)
            for key in _popular_keys(self.keys, await self.categories_of(item)):
                raw = await self._redis.get(key)
                if raw is not None:
                    cached = CachedList.decode(raw)
                    if items := await self.filter_items(cached.items, n, categories=wanted, exclude=[item]):
                        return SimilarItems(item, items, None, cached.generated_at, "fallback")
        return None

    async def recommend_session(
        self,
        items: Iterable[str | int],
        n: int = DEFAULT_N,
        categories: str | Iterable[str] | None = None,
        exclude: Iterable[str | int] | None = None,
    ) -> SessionRecommendations | None:
        """Recommendations for an anonymous session (see :meth:`RecommendationClient.recommend_session`).

        The inference runs on the calling thread (a millisecond or two: cheaper than a thread hop);
        a new model is loaded in a background thread, the first one in a worker thread awaited."""
        _check_n(n)
        history, dropped, wanted = _session_request(items, exclude, categories)
        if self._session_scorer is None:
            from .api.sessions import SessionScorer  # onnxruntime only for the callers that score

            self._session_scorer = SessionScorer(self._settings)
        sessions = self._session_scorer
        with self._explained:
            if sessions.due():
                served = await self.model_version()
                if sessions.model is None:
                    await asyncio.to_thread(sessions.refresh, served, True)
                else:
                    sessions.refresh(served)
            ranked = sessions.rank(history)
            if ranked is not None and (
                kept := await self.filter_items(ranked.items, n, categories=wanted, exclude=dropped)
            ):
                return SessionRecommendations(kept, ranked.model_version, ranked.generated_at, "personal")
            raw = await self._redis.get(self.keys.popular)
            if raw is None:
                return None
            cached = CachedList.decode(raw)
            kept = await self.filter_items(cached.items, n, categories=wanted, exclude=dropped)
            return SessionRecommendations(kept, None, cached.generated_at, "fallback")

    # HOOK(catalog): the team lead's catalog filter replaces these two stubs at the merge with main.
    async def filter_items(
        self,
        items: list[tuple[str, float]],
        n: int,
        categories: list[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> list[tuple[str, float]]:
        """At most ``n`` of ``items`` without ``exclude`` (stub until the catalog lands)."""
        dropped = set(exclude or ())
        return [(item, score) for item, score in items if item not in dropped][:n]

    async def categories_of(self, item_id: str) -> list[str]:
        """The item's categories (stub until the catalog lands)."""
        return []

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
