"""The scorer's one way to Redis: every read and write goes through :class:`RedisWriter`, which
waits out outages with one retry policy (:class:`RetryPolicy`) and writes many keys in one
pipeline (:meth:`RedisWriter.set_many`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis.exceptions import RedisClusterException

from streamrec.scorer.metrics import REDIS_WRITE_ERRORS
from streamrec.shared.logs import get_logger
from streamrec.shared.redis_connection import SyncRedis, explain, get_many, is_permanent

log = get_logger(__name__)

T = TypeVar("T")

# Redis failures worth waiting out: the server is down, restarting, loading, failing over or full
# (with ConnectionError, under which explain() puts a cluster nobody answers or a slot no node
# serves). Anything else (wrong password, missing ACL permission, a bug) is raised.
RETRYABLE_REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # also a Sentinel group naming no primary (MasterNotFoundError)
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,  # a demoted primary, until the client follows the failover
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN / MASTERDOWN: a cluster failing over
)


class Stopped(Exception):
    """Shutdown was requested while an operation was still being retried."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff: the first wait, doubled after each failure up to the cap."""

    first_delay_s: float = 0.2
    max_delay_s: float = 5.0


class RedisWriter:
    """The scorer's Redis client behind one retry policy.

    Every operation is retried until it succeeds, until Redis refuses it for good (credentials,
    permissions, a bug: raised at once) or until ``stopping`` is set (:class:`Stopped`).
    """

    def __init__(
        self,
        client: SyncRedis,
        url: str,
        stopping: threading.Event,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.url = url  # to explain a failure in one line, without the password
        self.stopping = stopping
        self.policy = policy or RetryPolicy()
        self.ok = True  # False while an operation is being retried (readiness)

    def retry(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``, waiting out Redis outages with capped exponential backoff.

        Raises :class:`Stopped` if shutdown is requested before it succeeds.
        """
        delay = self.policy.first_delay_s
        failures = 0
        while True:
            try:
                result = action()
            except (redis.exceptions.RedisError, RedisClusterException) as exc:
                # Refused credentials, a missing ACL permission or an unverifiable TLS certificate
                # are configuration problems, not outages: stop with one clear line (no password).
                if is_permanent(clear := explain(exc, self.url)):
                    raise clear from exc
                if not isinstance(clear, RETRYABLE_REDIS_ERRORS):
                    raise
                failures += 1
                self.ok = False
                REDIS_WRITE_ERRORS.inc()
                # Log the first failure and then every 10th, not every attempt.
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "Redis unavailable, retrying",
                        extra={"action": what, "attempts": failures, "retry_in_s": delay, "error": str(exc)},
                    )
                if self.stopping.wait(delay):
                    raise Stopped(what) from None
                delay = min(delay * 2, self.policy.max_delay_s)
                continue
            if failures:
                self.ok = True
                log.info("Redis available again", extra={"action": what, "attempts": failures + 1})
            return result

    def set_many(self, what: str, values: dict[str, bytes | str], ttl: int | None = None) -> None:
        """SET every key in one pipeline (no transaction), in the order given; ``ttl`` in seconds."""
        if not values:
            return

        expiry = () if ttl is None else ("EX", ttl)

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            # The command redis-py's ``set(key, value, ex=ttl)`` sends, without its per-call checks
            # of a dozen options (about 7% of the scorer's py-spy samples at 1,000 lists/s).
            command = pipe.execute_command
            for key, value in values.items():
                command("SET", key, value, *expiry)
            pipe.execute()

        self.retry(what, write)

    def set(self, what: str, key: str, value: bytes | str) -> None:
        """SET one key (no TTL)."""
        self.retry(what, lambda: self.client.set(key, value))

    def get(self, what: str, key: str) -> bytes | None:
        """GET one key."""
        return self.retry(what, lambda: self.client.get(key))

    def get_many(self, what: str, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys``, in order (None where missing), from one server or a cluster."""
        return self.retry(what, lambda: get_many(self.client, keys))

    def delete(self, what: str, keys: list[str]) -> None:
        """DEL ``keys``."""
        self.retry(what, lambda: self.client.delete(*keys))

    def ping(self) -> None:
        """Wait until Redis answers."""
        self.retry("connect to Redis", self.client.ping)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()
