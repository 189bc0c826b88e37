"""Cluster and Sentinel URLs: parsing, validation, redaction and the clients they give, no server.

The same URLs against a real 6-node cluster and a real Sentinel group (SET/GET, a failover) are
in tests/integration/test_redis_topologies.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from pydantic import SecretStr
from redis.exceptions import AuthenticationError

from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_connection import (
    AsyncRetryUnlessRefused,
    LazyRedisCluster,
    RedisClusterUnavailable,
    RedisCredentialsError,
    RetryUnlessRefused,
    connect,
    connect_async,
    connection_kwargs,
    explain,
    get_many,
    server_and_user,
)
from streamrec.shared.redis_urls import RedisTarget, parse_redis_url, redis_kind
from streamrec.shared.settings import ConfigError, Settings, load_settings

SECRET = "pa55-w0rd"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", RedisTarget("server", False)),
        ("rediss://h:6380/0", RedisTarget("server", True)),
        ("unix:///run/redis.sock", RedisTarget("server", False)),
        (
            "redis+cluster://h1:7000,h2:7001,h3",
            RedisTarget("cluster", False, (("h1", 7000), ("h2", 7001), ("h3", 6379))),
        ),
        (
            f"rediss+cluster://scorer:{SECRET}@h1:7000/0",
            RedisTarget("cluster", True, (("h1", 7000),), "scorer", SECRET),
        ),
        ("redis+cluster://[::1]:7000,h2:7001/", RedisTarget("cluster", False, (("::1", 7000), ("h2", 7001)))),
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2:26380,s3/mymaster/2",
            RedisTarget(
                "sentinel", False, (("s1", 26379), ("s2", 26380), ("s3", 26379)), None, SECRET, "mymaster", 2
            ),
        ),
        (
            "rediss+sentinel://u:p%40ss%2Fw@s1:1/my%20master",  # percent-encoded, as redis-py decodes
            RedisTarget("sentinel", True, (("s1", 1),), "u", "p@ss/w", "my master", 0),
        ),
        ("REDIS+CLUSTER://h:1", RedisTarget("cluster", False, (("h", 1),))),
    ],
)
def test_urls_parse_into_their_target(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected
    assert redis_kind(url) == expected.kind


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://:{SECRET}@h:6379/0", "expected redis://host:port/db"),
        (f"redis+cluster://:{SECRET}@h1:7000/1", "database 0 only"),
        (f"redis+cluster://:{SECRET}@/0", "no host"),
        (f"redis+cluster://:{SECRET}@h1:7000,,h2:1", "an empty host"),
        (f"redis+cluster://:{SECRET}@h1:port", "is not a port number"),
        (f"redis+cluster://:{SECRET}@h1:70000", "is not a port number"),
        (f"redis+cluster://:{SECRET}@h1:", "no port after"),
        (f"redis+cluster://:{SECRET}@h1:1?ssl_cert_reqs=none", "no query arguments"),
        (f"redis+sentinel://:{SECRET}@s1:26379", "no master name"),
        (f"redis+sentinel://:{SECRET}@s1:26379/", "no master name"),
        (f"redis+sentinel://:{SECRET}@s1:26379/m/x", "is not a number"),
        (f"redis+sentinel://:{SECRET}@s1:26379/m/0/extra", "too many path parts"),
        (f"redis+sentinel://:{SECRET}@[::1:26379/m", "malformed host"),
    ],
)
def test_malformed_urls_are_refused_clearly_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        parse_redis_url(url)
    assert SECRET not in str(refused.value)
    with pytest.raises(ConfigError, match="STREAMREC_REDIS_URL") as invalid:
        load_settings(redis_url=url)
    assert message in str(invalid.value) and SECRET not in str(invalid.value)


def test_cluster_and_sentinel_passwords_never_show() -> None:
    cluster = f"redis+cluster://scorer:{SECRET}@h1:7000,h2:7001"
    sentinel = f"rediss+sentinel://:{SECRET}@s1:26379,s2:26379/mymaster/0"
    assert redacted_url(cluster) == "redis+cluster://scorer:***@h1:7000,h2:7001"
    assert redacted_url(sentinel) == "rediss+sentinel://:***@s1:26379,s2:26379/mymaster/0"
    settings = Settings(redis_url=sentinel, redis_sentinel_password=SecretStr(SECRET))
    for text in (repr(settings), str(settings)):
        assert SECRET not in text
    env = settings.as_env()  # children need both secrets
    assert env["STREAMREC_REDIS_URL"] == sentinel and env["STREAMREC_REDIS_SENTINEL_PASSWORD"] == SECRET
    assert repr(parse_redis_url(cluster)).count(SECRET) == 0
    assert server_and_user(cluster) == ("Redis Cluster h1:7000,h2:7001", "scorer")
    assert server_and_user(sentinel) == ("Sentinel group (mymaster) s1:26379,s2:26379", "default")


def test_tls_files_go_with_every_rediss_kind_and_only_those(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    settings = Settings(redis_tls_ca_file=ca)
    for url in ("rediss+cluster://h:1", "rediss+sentinel://s:1/m/0"):
        assert connection_kwargs(settings, url) == {"ssl_ca_certs": str(ca)}
    for url in ("redis+cluster://h:1", "redis+sentinel://s:1/m/0"):
        with pytest.raises(ConfigError, match="use rediss:// for TLS"):
            connection_kwargs(settings, url)


def test_a_sentinel_url_gives_the_primarys_client_of_sentinel(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    settings = Settings(
        redis_url=f"rediss+sentinel://app:{SECRET}@s1:26379,s2:26380/mymaster/3",
        redis_sentinel_password=SecretStr("sentinels-own"),
        redis_tls_ca_file=ca,
    )
    client = connect(settings, socket_timeout=2.0, connect_timeout=1.0)  # lazy: no server needed
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    assert issubclass(pool.connection_class, redis.sentinel.SentinelManagedSSLConnection)
    data = pool.connection_kwargs
    assert (data["db"], data["username"], data["password"], data["ssl_ca_certs"]) == (
        3,
        "app",
        SECRET,
        str(ca),
    )
    assert (data["socket_timeout"], data["socket_connect_timeout"]) == (2.0, 1.0)
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ] == [
        ("s1", 26379),
        ("s2", 26380),
    ]
    own = sentinels[0].connection_pool.connection_kwargs
    assert own["password"] == "sentinels-own" and own.get("username") is None  # not the primary's
    assert own["ssl_ca_certs"] == str(ca) and own["socket_timeout"] == 2.0


def test_connect_async_builds_cluster_and_sentinel_clients_lazily() -> None:
    async def build() -> None:
        cluster = connect_async(Settings(redis_url=f"redis+cluster://:{SECRET}@h1:7000,h2:7001"))
        assert isinstance(cluster, redis.asyncio.cluster.RedisCluster)
        assert [(n.host, n.port) for n in cluster.startup_nodes] == [("h1", 7000), ("h2", 7001)]
        assert cluster.connection_kwargs["password"] == SECRET
        await cluster.aclose()
        primary = connect_async(Settings(redis_url="redis+sentinel://s1:26379/mymaster/1"))
        assert isinstance(primary.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
        assert primary.connection_pool.service_name == "mymaster"
        assert primary.connection_pool.connection_kwargs["db"] == 1
        await primary.aclose()

    asyncio.run(build())


def test_refused_sentinel_password_is_a_credentials_error() -> None:
    url = "redis+sentinel://s1:26379,s2:26379/mymaster/0"
    refusal = redis.sentinel.MasterNotFoundError(
        "No master found for 'mymaster' : <redis.client.Redis(...password=<REDACTED>...)> - auth:AuthenticationError"
    )
    clear = explain(refusal, url)
    assert isinstance(clear, RedisCredentialsError)
    assert "STREAMREC_REDIS_SENTINEL_PASSWORD" in str(clear) and "s1:26379,s2:26379" in str(clear)
    unreachable = redis.sentinel.MasterNotFoundError("No master found for 'mymaster' : ConnectionError(...)")
    assert explain(unreachable, url) is unreachable  # waited out like any outage


class FakeCluster:
    """What LazyRedisCluster builds, in these tests: records calls and closes."""

    def __init__(self) -> None:
        self.closed = False
        self.values = {"a": b"1", "b": b"2"}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def mget_nonatomic(self, keys: list[str]) -> list[bytes | None]:
        return [self.values.get(key) for key in keys]

    def close(self) -> None:
        self.closed = True


def test_a_cluster_client_is_built_on_first_use_and_again_after_a_failed_build() -> None:
    builds: list[str] = []
    outcomes: list[BaseException | FakeCluster] = [
        RedisClusterUnavailable("Redis Cluster h1:7000 is unavailable: Redis Cluster cannot be connected"),
        FakeCluster(),
    ]

    def build() -> FakeCluster:
        builds.append("build")
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    lazy = LazyRedisCluster(build)  # type: ignore[arg-type]
    assert builds == [] and not lazy.built
    lazy.close()  # nothing built: nothing to close
    get = lazy.get  # taken before the build (as in `retry(client.ping)`): builds when called
    assert builds == []
    with pytest.raises(redis.ConnectionError, match="is unavailable"):  # the command's own error
        get("a")
    assert lazy.get("a") == b"1" and lazy.get("b") == b"2" and builds == ["build", "build"]
    assert "get" in vars(lazy)  # the bound method is kept: later calls skip __getattr__
    assert get_many(lazy, ["a", "missing", "b"]) == [b"1", None, b"2"]  # per node, as for a cluster
    with lazy:
        pass
    assert lazy.cluster().closed and builds == ["build", "build"]
    with pytest.raises(AttributeError):
        lazy.__deepcopy__  # noqa: B018  # protocol probes do not build anything


def test_connect_gives_a_cluster_client_without_reaching_the_cluster() -> None:
    # No server listens on these: a service built while the cluster is down still starts.
    client = connect(Settings(redis_url=f"redis+cluster://:{SECRET}@127.0.0.1:1,127.0.0.1:2"))
    assert isinstance(client, LazyRedisCluster) and not client.built
    with pytest.raises(redis.ConnectionError) as unreachable:
        client.ping()
    assert str(unreachable.value).startswith("Redis Cluster 127.0.0.1:1,127.0.0.1:2 is unavailable: ")
    assert SECRET not in str(unreachable.value) and not client.built
    client.close()


def test_sentinels_refusing_the_password_are_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(redis.retry, "sleep", sleeps.append)
    calls: list[str] = []

    def refused() -> None:
        calls.append("refused")
        raise AuthenticationError("WRONGPASS invalid username-password pair or user is disabled.")

    def down() -> None:
        calls.append("down")
        raise redis.ConnectionError("Error 111 connecting to s1:26379. Connection refused.")

    retry = RetryUnlessRefused()
    with pytest.raises(AuthenticationError):
        retry.call_with_retry(refused, lambda _error: None)
    assert calls == ["refused"] and sleeps == []  # redis-py's own retry asked 10 more times
    with pytest.raises(redis.ConnectionError):
        retry.call_with_retry(down, lambda _error: None)
    assert calls.count("down") == 11 and len(sleeps) == 10  # an outage: redis-py's retry, as before

    # The sentinels' clients carry it, blocking and asyncio; the primary's keep redis-py's own.
    url = "redis+sentinel://s1:26379,s2:26379/mymaster/0"
    primary = connect(Settings(redis_url=url))
    for sentinel in primary.connection_pool.sentinel_manager.sentinels:
        assert isinstance(sentinel.connection_pool.connection_kwargs["retry"], RetryUnlessRefused)

    async def build() -> None:
        client = connect_async(Settings(redis_url=url))
        for sentinel in client.connection_pool.sentinel_manager.sentinels:
            assert isinstance(sentinel.connection_pool.connection_kwargs["retry"], AsyncRetryUnlessRefused)
        await client.aclose()

    asyncio.run(build())
