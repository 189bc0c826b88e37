"""Read a user's recommendations from Redis: the small client applications import.

::

    from streamrec.client import RecommendationClient

    client = RecommendationClient("redis://localhost:6379/0")
    recs = client.get("user-42", n=10)       # one GET; popular items if the user is unknown
    if recs is not None:
        print(recs.source, recs.items)        # [("sku-9", 3.1), ...], best first

:class:`AsyncRecommendationClient` is the same for asyncio (the HTTP API uses it). Both read what
the scorer writes (the key layout and JSON format are in ``streamrec.shared.contracts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .shared.contracts import CachedList, RedisKeys, Source
from .shared.events import normalise_id
from .shared.redis_connection import connect, connect_async, explained
from .shared.settings import ConfigError, Settings, load_settings

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
