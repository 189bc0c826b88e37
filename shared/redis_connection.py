"""The one place streamrec connects to Redis: URL credentials, TLS files and clear access errors.

Every Redis client of streamrec (scorer, api, the Python client, CLI, demo, benchmarks) is built
by :func:`connect` or :func:`connect_async` from the settings, so authentication and TLS behave the
same everywhere:

- ``STREAMREC_REDIS_URL`` carries the account: ``redis://:password@host:6379/0`` (the ``default``
  user, ``requirepass``) or ``redis://user:password@host:6379/0`` (an ACL user).
- ``rediss://`` turns TLS on (redis-py picks its SSLConnection for that scheme). The server's
  certificate is verified (redis-py's default: ``ssl_cert_reqs="required"``, host name checked)
  against ``STREAMREC_REDIS_TLS_CA_FILE``, or the system's CAs if unset; a client certificate
  (``STREAMREC_REDIS_TLS_CERT_FILE``/``_KEY_FILE``) is presented to servers that require one.
  redis-py's plain Connection refuses ``ssl_*`` keywords, so they are only passed for ``rediss://``.

Beyond one server (see :mod:`.redis_urls` for the URL forms):

- ``redis+cluster://host:port[,host:port…]`` gives a :class:`redis.cluster.RedisCluster` (asyncio:
  :class:`redis.asyncio.cluster.RedisCluster`); it follows MOVED/ASK redirects and, when a
  node fails, reads the slot map again and retries the command (``cluster_error_retry_attempts``,
  10 by default), then raises: callers that must not lose a write retry it themselves (the scorer).
  Both read the slot map on their first command, not when built (the blocking one is wrapped in a
  :class:`LazyRedisCluster`), so a service starts while the cluster is down, as with one server.
  redis-py's errors of a cluster it cannot reach are not all ``RedisError``s: :func:`explain`
  turns them into :class:`RedisClusterUnavailable`, a ``ConnectionError``.
- ``redis+sentinel://host:port[,host:port…]/<master name>/<db>`` gives the primary's client of
  :meth:`redis.sentinel.Sentinel.master_for` (asyncio likewise): each new connection asks the
  sentinels where the primary is, so after a failover the next command reaches the promoted
  replica. The sentinels' own password is ``STREAMREC_REDIS_SENTINEL_PASSWORD``.
- ``rediss+cluster://`` and ``rediss+sentinel://`` use TLS with the same TLS settings (for
  Sentinel: to the sentinels and to the data nodes).

Refused credentials and missing ACL permissions are configuration errors, not outages: retrying
cannot fix them. :func:`explain` turns them into :class:`RedisCredentialsError` /
:class:`RedisPermissionError` (a :class:`ConfigError` *and* the redis-py exception they replace,
so ``except redis.RedisError`` still catches them) with one line naming the user and server,
never the password. Unreachable servers stay ``redis.ConnectionError``: callers wait those out.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    SlotNotCoveredError,
)

from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_urls import RedisTarget, parse_redis_url
from streamrec.shared.settings import ENV_PREFIX, ConfigError, Settings

# What connect_async() returns: one server's or a Sentinel primary's client, or a cluster's
# (connect()'s is SyncRedis, below).
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

# The TLS settings and the redis-py SSLConnection keyword each one becomes.
TLS_FILE_SETTINGS = {
    "redis_tls_ca_file": "ssl_ca_certs",
    "redis_tls_cert_file": "ssl_certfile",
    "redis_tls_key_file": "ssl_keyfile",
}
CHECK_URL = f"check the user and password in {ENV_PREFIX}REDIS_URL"


class RedisCredentialsError(ConfigError, AuthenticationError):
    """Redis refused the user/password (or needs one and none was given): fix the configuration."""


class RedisPermissionError(ConfigError, NoPermissionError):
    """The Redis ACL user may not run a command streamrec needs: grant it on the server."""


class RedisTlsError(ConfigError, redis.exceptions.ConnectionError):
    """The TLS handshake failed on the server's certificate: fix the CA file or the URL's host."""


def redis_url(settings: Settings) -> str:
    """``settings.redis_url``, or a ConfigError saying how to set it."""
    if settings.redis_url is None:
        raise ConfigError(f"{ENV_PREFIX}REDIS_URL is not set: point it at your Redis (see `streamrec dev`)")
    return settings.redis_url


def connection_kwargs(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py keywords for ``url`` beyond what the URL says: the TLS files, checked to exist.

    Raises ConfigError if a TLS file is set for a URL that is not ``rediss[+…]://`` (the connection
    would silently be plain text) or does not exist (redis-py would report it as a connection
    error, which callers retry forever).
    """
    files = {name: getattr(settings, name) for name in TLS_FILE_SETTINGS if getattr(settings, name)}
    if not url.startswith(("rediss://", "rediss+cluster://", "rediss+sentinel://")):
        if files:
            names = ", ".join(f"{ENV_PREFIX}{name.upper()}" for name in files)
            raise ConfigError(
                f"{names} set, but {ENV_PREFIX}REDIS_URL is not rediss://: use rediss:// for TLS "
                f"(it is {redacted_url(url)})"
            )
        return {}
    kwargs: dict[str, Any] = {}
    for name, path in files.items():
        if not path.is_file():
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}: no such file: {path}")
        kwargs[TLS_FILE_SETTINGS[name]] = str(path)
    return kwargs


def _target(url: str) -> RedisTarget:
    try:
        return parse_redis_url(url)
    except ValueError as exc:  # settings validate their URL; an explicit ``url=`` may still be wrong
        raise ConfigError(f"{ENV_PREFIX}REDIS_URL: {exc}") from None


def _client_kwargs(
    settings: Settings,
    url: str,
    target: RedisTarget,
    socket_timeout: float | None,
    connect_timeout: float | None,
) -> dict[str, Any]:
    """Keywords of every data-node connection of a cluster or Sentinel URL."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "username": target.username,
        "password": target.password,
        **connection_kwargs(settings, url),
    }
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


# redis-py's default retry of a client's connections: 10 more tries, exponential backoff with
# jitter from 10 ms up to 1 s (redis._defaults).
RETRIES, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS = 10, 0.01, 1.0


def _not_refused(is_retryable: Callable[[Exception], bool] | None) -> Callable[[Exception], bool]:
    def retryable(error: Exception) -> bool:
        if isinstance(error, AuthenticationError):  # a password: no retry changes the answer
            return False
        return is_retryable is None or is_retryable(error)

    return retryable


class RetryUnlessRefused(redis.retry.Retry):
    """redis-py's default retry, except that a refused password is raised at once.

    A connection's retry covers its handshake, and ``AuthenticationError`` is a ``ConnectionError``:
    a sentinel refusing the password was asked 11 times with backoff, each sentinel in turn, so
    the error took ~12 s to surface (3 sentinels). Given to the sentinels' clients.
    """

    def __init__(self) -> None:
        super().__init__(ExponentialWithJitterBackoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS), RETRIES)

    def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        return super().call_with_retry(do, fail, _not_refused(is_retryable), with_failure_count)


class AsyncRetryUnlessRefused(redis.asyncio.retry.Retry):
    """The asyncio twin of :class:`RetryUnlessRefused`."""

    def __init__(self) -> None:
        super().__init__(ExponentialWithJitterBackoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS), RETRIES)

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        return await super().call_with_retry(do, fail, _not_refused(is_retryable), with_failure_count)


def _sentinel_kwargs(client_kwargs: dict[str, Any], settings: Settings, *, asyncio: bool) -> dict[str, Any]:
    """Keywords of the connections to the sentinels: the same timeouts and TLS, their own password,
    and a retry that gives up at once when they refuse that password."""
    kwargs = {k: v for k, v in client_kwargs.items() if k not in ("username", "password")}
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    kwargs["retry"] = AsyncRetryUnlessRefused() if asyncio else RetryUnlessRefused()
    return kwargs


# redis-py's RedisClusterExceptions (not RedisErrors) of a cluster whose slot map it cannot read
# whole from any node: every node down, or a failover under way. Outages, like a refused connection.
CLUSTER_OUTAGE_MESSAGES = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
)


class RedisClusterUnavailable(redis.exceptions.ConnectionError):
    """No node of the cluster answers, or no node serves a key's slot (a failover under way).

    redis-py raises these as ``RedisClusterException`` / ``SlotNotCoveredError``, which are not
    ``RedisError``s; as this ``ConnectionError`` they are waited out like any unreachable Redis, and
    ``except redis.RedisError`` (the API's 503, the CLI's one line) catches them.
    """


def cluster_error(exc: RedisClusterException, where: str) -> BaseException:
    """What one of redis-py's ``RedisClusterException``s is: the refusal that caused it (wrong
    credentials, ACL, TLS certificate; :func:`explain` words it), an outage
    (:class:`RedisClusterUnavailable`), or ``exc`` itself: a command no cluster runs (keys of several
    slots in one command or transaction), a bug to raise."""
    cause = exc.__cause__
    refused = isinstance(cause, AuthenticationError | NoPermissionError) or (
        isinstance(cause, redis.RedisError) and not isinstance(cause, redis.exceptions.ConnectionError)
    )
    if refused or (isinstance(cause, redis.RedisError) and explain(cause, "") is not cause):
        assert cause is not None
        return cause
    if isinstance(exc, SlotNotCoveredError) or str(exc).startswith(CLUSTER_OUTAGE_MESSAGES):
        error = RedisClusterUnavailable(f"{where} is unavailable: {exc}")
        error.__cause__ = exc
        return error
    return exc


class LazyRedisCluster:
    """A blocking :class:`redis.cluster.RedisCluster` built on first use, not when created.

    redis-py's blocking RedisCluster reads the slot map from its startup nodes in its constructor,
    so a scorer, an API or a client created while the cluster is down (or during a failover) would
    fail at once, where one server's client, a Sentinel primary's and the asyncio cluster's connect
    on their first command. This stands in for it: the first attribute asked for (a command,
    ``pipeline()``) builds the client, under a lock, and a build that failed is tried again on the
    next use. The build's error is that command's error: :class:`RedisClusterUnavailable` (a
    ``ConnectionError``) while no node answers, redis-py's ``AuthenticationError`` for refused
    credentials (:func:`explain` words it). A method taken before the build (``client.ping``) builds
    when it is called. Once built, the client's methods are looked up once and kept on this object,
    so a call costs what a call of the client itself does.
    """

    def __init__(self, build: Callable[[], redis.cluster.RedisCluster]) -> None:
        self._build = build
        self._client: redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()

    def cluster(self) -> redis.cluster.RedisCluster:
        """The RedisCluster, built now if it was not yet (raises what the build raises)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
                client = self._client
        return client

    @property
    def built(self) -> bool:
        """True once the client was built (the slot map read)."""
        return self._client is not None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probing for protocols
            raise AttributeError(name)
        if self._client is None and callable(getattr(redis.cluster.RedisCluster, name, None)):
            # A method taken before the first build (``retry(client.ping)``) builds when called.
            def deferred(*args: Any, **kwargs: Any) -> Any:
                return getattr(self.cluster(), name)(*args, **kwargs)

            return deferred
        value = getattr(self.cluster(), name)
        if callable(value):
            self.__dict__[name] = value  # found in the instance from now on: no __getattr__
        return value

    def close(self) -> None:
        """Close the client's connections, if it was built."""
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> LazyRedisCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LazyRedisCluster {'built' if self._client is not None else 'not built yet'}>"


# What connect() returns: one server's or a Sentinel primary's client, or a cluster's.
SyncRedis = redis.Redis | redis.cluster.RedisCluster | LazyRedisCluster


def connect(
    settings: Settings,
    *,
    url: str | None = None,
    socket_timeout: float | None = 5.0,
    connect_timeout: float | None = 5.0,
) -> SyncRedis:
    """A blocking Redis client for ``settings`` (``url`` overrides ``settings.redis_url``).

    Every kind connects lazily: the first command opens the connection (and may raise); for a
    cluster, a :class:`LazyRedisCluster` reads the slot map then. A timeout of None waits forever
    (for a subscriber that idles).
    """
    url = url or redis_url(settings)
    target = _target(url)
    if target.kind == "server":
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **connection_kwargs(settings, url),
        )
    kwargs = _client_kwargs(settings, url, target, socket_timeout, connect_timeout)
    if target.kind == "cluster":

        def build() -> redis.cluster.RedisCluster:
            try:
                return redis.cluster.RedisCluster(
                    startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in target.nodes],
                    **kwargs,
                )
            except RedisClusterException as exc:
                raise cluster_error(exc, f"Redis Cluster {target.where}") from exc

        return LazyRedisCluster(build)
    sentinel = redis.sentinel.Sentinel(
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(kwargs, settings, asyncio=False)
    )
    assert target.master_name is not None
    return sentinel.master_for(target.master_name, db=target.db, **kwargs)


def connect_async(
    settings: Settings,
    *,
    url: str | None = None,
    socket_timeout: float | None = 5.0,
    connect_timeout: float | None = 5.0,
) -> AsyncRedis:
    """The asyncio twin of :func:`connect`; connects lazily for every kind of URL."""
    url = url or redis_url(settings)
    target = _target(url)
    if target.kind == "server":
        return redis.asyncio.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **connection_kwargs(settings, url),
        )
    kwargs = _client_kwargs(settings, url, target, socket_timeout, connect_timeout)
    if target.kind == "cluster":
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes],
            **kwargs,
        )
    sentinel = redis.asyncio.sentinel.Sentinel(
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(kwargs, settings, asyncio=True)
    )
    assert target.master_name is not None
    return sentinel.master_for(target.master_name, db=target.db, **kwargs)


def get_many(client: SyncRedis, keys: list[str]) -> list[bytes | None]:
    """The values of ``keys``, in order (None where missing), from one server or a cluster.

    A cluster refuses an MGET whose keys live in different slots; its client's non-atomic MGET
    asks each slot's node for its keys instead. Nothing here needs the keys read atomically.
    """
    if isinstance(client, redis.cluster.RedisCluster | LazyRedisCluster):
        return client.mget_nonatomic(keys)
    return client.mget(keys)


def server_and_user(url: str) -> tuple[str, str]:
    """(``host:port`` or socket path, ACL user name) of a Redis URL, for messages; no password."""
    try:
        target = parse_redis_url(url)
        if target.kind != "server":
            kind = "Redis Cluster" if target.kind == "cluster" else f"Sentinel group ({target.master_name})"
            return f"{kind} {target.where}", target.username or "default"
        parts = urlsplit(url)
        if parts.scheme == "unix":
            where = parts.path
        else:
            where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        return where, parts.username or "default"
    except ValueError:  # e.g. a port that is not a number: say no more than the redacted URL
        return str(redacted_url(url)), "default"


def explain(exc: BaseException, url: str) -> BaseException:
    """``exc`` as a clear, permanent error if it is one (credentials, ACL, TLS certificate); else
    ``exc`` itself. The message names the user and server, never the password."""
    if isinstance(exc, RedisCredentialsError | RedisPermissionError | RedisTlsError):
        return exc
    where, user = server_and_user(url)
    if isinstance(exc, RedisClusterException):  # not a RedisError: see cluster_error
        seen = cluster_error(exc, where)
        return exc if seen is exc else explain(seen, url)
    detail = str(exc).rstrip(".")
    if isinstance(exc, AuthenticationError):
        parts = urlsplit(url)
        if parts.password is None and "password=" not in parts.query:
            return RedisCredentialsError(
                f"Redis at {where} requires a password and {ENV_PREFIX}REDIS_URL has none: {detail} "
                "(use redis://:PASSWORD@host:port/db, or redis://USER:PASSWORD@host:port/db for an ACL user)"
            )
        return RedisCredentialsError(
            f"Redis refused the credentials for user {user!r} at {where}: {detail} ({CHECK_URL})"
        )
    if isinstance(exc, NoPermissionError):
        return RedisPermissionError(
            f"Redis user {user!r} at {where} lacks a permission streamrec needs: {detail} "
            "(grant it in the server's ACL; see docs/reliability.md, Security)"
        )
    if isinstance(exc, redis.sentinel.MasterNotFoundError | redis.asyncio.sentinel.MasterNotFoundError) and (
        "AuthenticationError" in detail or "AuthenticationRequiredError" in detail
    ):  # redis-py asks each sentinel in turn and sums up their refusals in this one error
        return RedisCredentialsError(  # its detail lists every sentinel's whole connection: too long
            f"the sentinels of the {where} refused to answer: a missing or wrong password "
            f"(check {ENV_PREFIX}REDIS_SENTINEL_PASSWORD, the sentinels' own requirepass)"
        )
    cause = exc.__cause__ or exc.__context__  # redis-py raises ConnectionError inside its except
    if isinstance(exc, redis.exceptions.ConnectionError) and isinstance(cause, ssl.SSLCertVerificationError):
        reason = getattr(cause, "verify_message", None) or cause
        return RedisTlsError(
            f"Redis at {where}: TLS certificate verification failed: {reason} "
            f"(check {ENV_PREFIX}REDIS_TLS_CA_FILE, and that the URL's host is in the server's certificate)"
        )
    return exc


class explained:  # lower-case: used like a function, ``with explained(url): ...``
    """Re-raise permanent Redis errors raised inside the block as :func:`explain` describes them.

    Works around ``await`` too: ``with explained(url): await client.get(key)``. A plain class, not a
    generator: it sits on the client's read path, where ``@contextmanager`` cost ~2.5 µs a call on
    this project's benchmark machine and this costs ~0.3 µs. It keeps no state, so one instance
    can serve every call, nested or concurrent.
    """

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> bool:
        if not isinstance(exc, redis.exceptions.RedisError | RedisClusterException):
            return False
        clear = explain(exc, self.url)
        if clear is exc:
            return False
        raise clear from exc


def is_permanent(exc: BaseException) -> bool:
    """True for errors that waiting cannot fix (credentials, ACL, TLS certificate)."""
    return isinstance(exc, RedisCredentialsError | RedisPermissionError | RedisTlsError)
