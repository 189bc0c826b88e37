"""Redis connection settings, error explanations and URL redaction: pure logic, no server.

The same behaviour against real password-, ACL- and TLS-protected redis-servers is in
tests/integration/test_redis_security.py.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

from streamrec.cli import dev_env_file
from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_connection import (
    RedisCredentialsError,
    RedisPermissionError,
    RedisTlsError,
    connect,
    connect_async,
    connection_kwargs,
    explain,
    explained,
    is_permanent,
)
from streamrec.shared.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pa55-w0rd"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (f"redis://:{SECRET}@redis:6379/0", "redis://:***@redis:6379/0"),
        (f"rediss://scorer:{SECRET}@r.example:6380/2", "rediss://scorer:***@r.example:6380/2"),
        ("redis://scorer@r:6379/0", "redis://scorer@r:6379/0"),  # no password: nothing to hide
        # A password with "@", "/" or ":" (unescaped, so not a valid URL): still hidden.
        ("redis://u:p@ss/w:rd@host:1/0", "redis://u:***@host:1/0"),
        # redis-py also takes the password as a query argument.
        (
            f"rediss://h:1/0?ssl_cert_reqs=required&password={SECRET}&db=1",
            "rediss://h:1/0?ssl_cert_reqs=required&password=***&db=1",
        ),
        (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
        ("not a url", "not a url"),
        (None, None),
    ],
)
def test_redacted_url_hides_only_the_password(url: str | None, expected: str | None) -> None:
    assert redacted_url(url) == expected


def test_settings_never_show_the_redis_password() -> None:
    settings = Settings(redis_url=f"redis://scorer:{SECRET}@h:6379/0")
    for text in (repr(settings), str(settings)):
        assert SECRET not in text and "redis://scorer:***@h:6379/0" in text
    assert settings.as_env()["STREAMREC_REDIS_URL"] == f"redis://scorer:{SECRET}@h:6379/0"  # children need it
    with pytest.raises(ConfigError, match="STREAMREC_REDIS_URL") as refused:
        load_settings(redis_url=f"http://:{SECRET}@h:6379/0")
    assert SECRET not in str(refused.value)


def test_tls_files_become_ssl_keywords_only_for_rediss(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("PEM")
    settings = Settings(redis_tls_ca_file=ca, redis_tls_cert_file=cert, redis_tls_key_file=key)
    assert connection_kwargs(settings, "rediss://h:6380/0") == {
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    assert connection_kwargs(Settings(), "rediss://h:6380/0") == {}  # system CAs, redis-py's defaults
    assert connection_kwargs(Settings(), "redis://h:6379/0") == {}

    # TLS files with a plain URL would silently connect in clear text.
    with pytest.raises(ConfigError, match=r"STREAMREC_REDIS_TLS_CA_FILE.*not rediss://") as refused:
        connection_kwargs(settings, f"redis://:{SECRET}@h:6379/0")
    assert SECRET not in str(refused.value)
    # A missing file is a configuration error, not a connection error to retry forever.
    with pytest.raises(ConfigError, match="STREAMREC_REDIS_TLS_CA_FILE: no such file"):
        connection_kwargs(Settings(redis_tls_ca_file=tmp_path / "gone.pem"), "rediss://h:6380/0")
    with pytest.raises(ConfigError, match=r"STREAMREC_REDIS_TLS_KEY_FILE.*CERT_FILE"):
        load_settings(redis_tls_key_file=key)


def test_connect_builds_tls_clients_with_the_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    settings = Settings(redis_url=f"rediss://scorer:{SECRET}@h:6380/3", redis_tls_ca_file=ca)
    sync_client = connect(settings, socket_timeout=1.5)
    async_client = connect_async(settings)
    for client, ssl_class in (
        (sync_client, redis.SSLConnection),
        (async_client, redis.asyncio.SSLConnection),
    ):
        pool = client.connection_pool
        assert pool.connection_class is ssl_class
        assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
        assert pool.connection_kwargs["username"] == "scorer"
        assert pool.connection_kwargs["password"] == SECRET
        assert pool.connection_kwargs["db"] == 3
        assert SECRET not in repr(client)  # redis-py redacts it in its own repr too
    assert sync_client.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    plain = connect(Settings(redis_url="redis://h:6379/0"))
    assert plain.connection_pool.connection_class is redis.Connection


def test_refused_credentials_become_one_clear_permanent_error() -> None:
    url = f"redis://scorer:{SECRET}@redis.internal:6390/0"
    error = explain(AuthenticationError("invalid username-password pair or user is disabled."), url)
    assert isinstance(error, RedisCredentialsError) and is_permanent(error)
    # Still what redis-py raises, so `except redis.AuthenticationError` / `RedisError` catch it.
    assert isinstance(error, AuthenticationError | ConfigError)
    assert str(error) == (
        "Redis refused the credentials for user 'scorer' at redis.internal:6390: invalid "
        "username-password pair or user is disabled (check the user and password in STREAMREC_REDIS_URL)"
    )
    missing = explain(AuthenticationError("Authentication required."), "redis://redis.internal:6390/0")
    assert isinstance(missing, RedisCredentialsError)
    assert str(missing).startswith("Redis at redis.internal:6390 requires a password")

    denied = explain(NoPermissionError("this user has no permissions to run the 'set' command"), url)
    assert isinstance(denied, RedisPermissionError | NoPermissionError) and is_permanent(denied)
    assert "user 'scorer' at redis.internal:6390" in str(denied)
    assert all(SECRET not in str(e) for e in (error, missing, denied))


def test_certificate_failures_are_permanent_and_outages_are_not() -> None:
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as cause:
            raise redis.ConnectionError("Error 1 connecting to h:6380. certificate verify failed") from cause
    except redis.ConnectionError as exc:
        tls = explain(exc, "rediss://h:6380/0")
    assert isinstance(tls, RedisTlsError) and "STREAMREC_REDIS_TLS_CA_FILE" in str(tls)

    for transient in (
        redis.ConnectionError("Error 111 connecting to h:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from h:6379"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    ):
        assert explain(transient, "redis://h:6379/0") is transient and not is_permanent(transient)


def test_explained_rewrites_permanent_errors_and_lets_everything_else_through() -> None:
    guard = explained("redis://reader:hunter2@redis.internal:6390/0")  # one instance, reused below
    with pytest.raises(RedisCredentialsError) as refused, guard:
        raise AuthenticationError("invalid username-password pair or user is disabled.")
    assert isinstance(refused.value.__cause__, AuthenticationError) and "hunter2" not in str(refused.value)

    outage = redis.ConnectionError("Error 111 connecting to redis.internal:6390. Connection refused.")
    with pytest.raises(redis.ConnectionError) as raised, guard:
        raise outage
    assert raised.value is outage
    with pytest.raises(KeyError), guard:
        raise KeyError("not a Redis error")
    with guard:
        value = 42
    assert value == 42


def test_dev_env_file_never_writes_a_password() -> None:
    embedded = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:2/0")
    assert "export STREAMREC_REDIS_URL=redis://127.0.0.1:2/0\n" in dev_env_file(embedded)
    configured = Settings(kafka_bootstrap="127.0.0.1:1", redis_url=f"redis://:{SECRET}@10.0.0.5:6379/0")
    text = dev_env_file(configured)
    assert SECRET not in text and "export STREAMREC_REDIS_URL" not in text
    assert "export STREAMREC_KAFKA_BOOTSTRAP=127.0.0.1:1" in text


def test_dev_env_file_names_a_key_prefix_other_than_the_default() -> None:
    # The second shell reads the keys the services write: a cluster shared with other users may
    # hold streamrec's keys under a prefix of their own.
    default = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:2/0")
    assert "STREAMREC_REDIS_PREFIX" not in dev_env_file(default)
    shared = default.model_copy(update={"redis_prefix": "shop-a"})
    assert "export STREAMREC_REDIS_PREFIX=shop-a\n" in dev_env_file(shared)


# The product's Redis clients, built anywhere but the one shared builder, would skip its TLS
# files and error explanations.
OWN_CLIENT = re.compile(r"\bfrom_url\(|\bRedis\(|StrictRedis\(|ConnectionPool\(")


def test_every_redis_client_comes_from_the_shared_builder() -> None:
    builder = ROOT / "shared" / "redis_connection.py"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("shared", "services", "streamrec", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != builder
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OWN_CLIENT.search(line)
    ]
    assert offenders == []
