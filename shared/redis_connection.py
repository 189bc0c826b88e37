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

Refused credentials and missing ACL permissions are configuration errors, not outages: retrying
cannot fix them. :func:`explain` turns them into :class:`RedisCredentialsError` /
:class:`RedisPermissionError` (a :class:`ConfigError` *and* the redis-py exception they replace,
so ``except redis.RedisError`` still catches them) with one line naming the user and server,
never the password. Unreachable servers stay ``redis.ConnectionError``: callers wait those out.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.exceptions import AuthenticationError, NoPermissionError

from .redaction import redacted_url
from .settings import ENV_PREFIX, ConfigError, Settings

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

    Raises ConfigError if a TLS file is set for a URL that is not ``rediss://`` (the connection
    would silently be plain text) or does not exist (redis-py would report it as a connection
    error, which callers retry forever).
    """
    files = {name: getattr(settings, name) for name in TLS_FILE_SETTINGS if getattr(settings, name)}
    if not url.startswith("rediss://"):
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


def connect(
    settings: Settings,
    *,
    url: str | None = None,
    socket_timeout: float | None = 5.0,
    connect_timeout: float | None = 5.0,
) -> redis.Redis:
    """A blocking Redis client for ``settings`` (``url`` overrides ``settings.redis_url``).

    Connects lazily: the first command opens the connection (and may raise). A timeout of None
    waits forever (for a subscriber that idles).
    """
    url = url or redis_url(settings)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        **connection_kwargs(settings, url),
    )


def connect_async(
    settings: Settings,
    *,
    url: str | None = None,
    socket_timeout: float | None = 5.0,
    connect_timeout: float | None = 5.0,
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect`."""
    url = url or redis_url(settings)
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        **connection_kwargs(settings, url),
    )


def server_and_user(url: str) -> tuple[str, str]:
    """(``host:port`` or socket path, ACL user name) of a Redis URL, for messages; no password."""
    try:
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
        if not isinstance(exc, redis.exceptions.RedisError):
            return False
        clear = explain(exc, self.url)
        if clear is exc:
            return False
        raise clear from exc


def is_permanent(exc: BaseException) -> bool:
    """True for errors that waiting cannot fix (credentials, ACL, TLS certificate)."""
    return isinstance(exc, RedisCredentialsError | RedisPermissionError | RedisTlsError)
