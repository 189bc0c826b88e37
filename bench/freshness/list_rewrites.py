"""The time each user's list is rewritten, from Redis keyspace notifications (no polling), on every
node that holds lists: one server, a Sentinel group's primary, or each primary of a Redis Cluster
(a cluster node notifies only of its own keys, so each is subscribed to)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis.asyncio

from streamrec.shared.redis_connection import LazyRedisCluster, connect, connect_async
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.redis_urls import parse_redis_url
from streamrec.shared.settings import Settings

NOTIFY = "notify-keyspace-events"


def _node_urls(settings: Settings) -> list[str] | None:
    """``redis://`` URLs of a cluster's primaries, or None when the settings name one primary."""
    store = connect(settings)
    if not isinstance(store, LazyRedisCluster):
        return None
    try:
        target = parse_redis_url(settings.redis_url or "")
        auth = ""
        if target.password:
            auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
        return [f"redis://{auth}{node.host}:{node.port}/0" for node in store.cluster().get_primaries()]
    finally:
        store.close()


class ListRewrites:
    """While open, calls ``rewritten(user, epoch_seconds)`` for every ``SET`` of a user's list.

    Opening turns on keyspace notifications of string commands (``K$``) on each node and
    subscribes to the lists' channel; closing restores each node's setting.
    """

    def __init__(self, settings: Settings, rewritten: Callable[[str, float], None]) -> None:
        self._settings = settings
        self._rewritten = rewritten
        self._stores: list[redis.asyncio.Redis] = []
        self._previous: list[str] = []
        self._listeners: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        urls = _node_urls(self._settings)
        clients = (
            [connect_async(self._settings, socket_timeout=None, connect_timeout=None)]
            if urls is None
            else [
                connect_async(self._settings, url=url, socket_timeout=None, connect_timeout=None)
                for url in urls
            ]
        )
        for store in clients:
            assert isinstance(store, redis.asyncio.Redis)  # one node each
            self._stores.append(store)
            self._previous.append((await store.config_get(NOTIFY)).get(NOTIFY, ""))
            await store.config_set(NOTIFY, "K$")
            db = store.connection_pool.connection_kwargs.get("db", 0)
            channel = f"__keyspace@{db}__:{RedisKeys(self._settings.redis_prefix).recs('')}"
            pubsub = store.pubsub()
            await pubsub.psubscribe(f"{channel}*")
            self._listeners.append(asyncio.create_task(self._listen(pubsub, channel)))
        return self

    async def _listen(self, pubsub: redis.asyncio.client.PubSub, channel: str) -> None:
        try:
            async for message in pubsub.listen():
                if message["type"] == "pmessage" and message["data"] == b"set":
                    self._rewritten(message["channel"].decode()[len(channel) :], time.time())
        finally:
            await pubsub.aclose()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for listener in self._listeners:
            listener.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        for store, previous in zip(self._stores, self._previous, strict=True):
            await store.config_set(NOTIFY, previous)
            await store.aclose()
