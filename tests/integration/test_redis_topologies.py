"""streamrec's Redis connection on a real Redis Cluster and a real Sentinel group.

The module starts (streamrec.redis_servers, on free loopback ports) a cluster of 6 nodes (3
primaries, 3 replicas) and a Sentinel group (1 primary, 1 replica, 3 sentinels), both with
passwords (the sentinels with their own). Through ``connect()`` / ``connect_async()`` and the
``redis+cluster://`` / ``redis+sentinel://`` URLs it writes and reads keys; then it kills -9 the
Sentinel primary and a cluster primary and measures how long until writes succeed again; then
kills another cluster primary under the scorer's own writes, which must wait it out. A last
cluster is down when the scorer, the clients and the API are built: they start, and work once it is up.

The failover times are printed (run with ``-s`` to see them) and bounded by FAILOVER_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from fastapi.testclient import TestClient
from pydantic import SecretStr

from streamrec.api.app import check_redis_access, create_app
from streamrec.client import RecommendationClient
from streamrec.redis_servers import RedisClusterServers, SentinelGroup, cluster_tools_missing
from streamrec.scorer.metrics import REDIS_WRITE_ERRORS
from streamrec.scorer.scoring import ScoredLists
from streamrec.scorer.service import ScorerService
from streamrec.shared.cached_list import CachedList
from streamrec.shared.redis_connection import (
    LazyRedisCluster,
    RedisCredentialsError,
    connect,
    connect_async,
    explain,
    get_many,
)
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "data-n0des"
SENTINEL_PASSWORD = "sentinel-s3cret"
# From the kill until a write succeeds again: the failure detection (2 s node timeout, 1 s
# down-after) plus the election, plus the client's retries; the target is 15 s.
FAILOVER_SECONDS = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 6-node Redis Cluster (3 primaries, 3 replicas) with a password."""
    if reason := cluster_tools_missing():
        pytest.skip(reason)
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), password=PASSWORD) as servers:
        print(f"\nredis cluster: 6 nodes ok in {servers.started_seconds:.1f}s")
        yield servers


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """One primary, one replica and three sentinels, the sentinels with their own password."""
    with SentinelGroup(
        tmp_path_factory.mktemp("redis-sentinel"), password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as group:
        print(f"\nredis sentinel group: ready in {group.started_seconds:.1f}s")
        yield group


def sentinel_settings(group: SentinelGroup, sentinel_password: str | None = SENTINEL_PASSWORD) -> Settings:
    """Settings for the group's URL and the sentinels' password."""
    secret = SecretStr(sentinel_password) if sentinel_password is not None else None
    return Settings(redis_url=group.url, redis_sentinel_password=secret)


def test_connect_reads_and_writes_across_the_cluster(cluster: RedisClusterServers) -> None:
    store = connect(Settings(redis_url=cluster.url))
    assert isinstance(store, LazyRedisCluster) and isinstance(store.cluster(), redis.cluster.RedisCluster)
    keys = [f"topology:user-{n}" for n in range(60)]
    for key in keys:
        store.set(key, key.encode())
    assert [store.get(key) for key in keys] == [key.encode() for key in keys]
    # The keys landed on every primary, each key on the one its slot names.
    serving = {cluster.primary_for(key).name for key in keys}
    assert len(serving) == 3
    for key in keys[:6]:
        with cluster.primary_for(key).client(PASSWORD) as node:
            assert node.get(key) == key.encode()
    store.close()

    async def through_asyncio() -> list[bytes | None]:
        client = connect_async(Settings(redis_url=cluster.url))
        try:
            await client.set("topology:async", b"yes")
            return [await client.get(key) for key in ("topology:async", keys[0])]
        finally:
            await client.aclose()

    assert asyncio.run(through_asyncio()) == [b"yes", keys[0].encode()]

    # Many keys of different slots at once (the demo's and the benchmarks' readers): a cluster
    # refuses one MGET of them, get_many asks each node for its own.
    store = connect(Settings(redis_url=cluster.url))
    with pytest.raises(redis.RedisClusterException):
        store.mget(keys)
    assert get_many(store, [*keys, "topology:missing"]) == [key.encode() for key in keys] + [None]
    store.close()


def test_a_wrong_cluster_password_is_a_clear_error(cluster: RedisClusterServers) -> None:
    url = cluster.url.replace(f":{PASSWORD}@", ":wrong@")
    with pytest.raises(redis.AuthenticationError) as refused:
        connect(Settings(redis_url=url)).ping()
    clear = explain(refused.value, url)
    assert isinstance(clear, RedisCredentialsError) and "Redis Cluster 127.0.0.1:" in str(clear)
    assert "wrong" not in str(clear)


def test_connect_reads_and_writes_through_the_sentinels(sentinels: SentinelGroup) -> None:
    store = connect(sentinel_settings(sentinels))
    assert isinstance(store, redis.Redis)
    store.set("topology:sentinel", b"1")
    assert store.get("topology:sentinel") == b"1"
    with sentinels.primary().client(PASSWORD) as primary:  # it went to the primary the sentinels name
        assert primary.get("topology:sentinel") == b"1"
    store.close()

    async def through_asyncio() -> bytes | None:
        client = connect_async(sentinel_settings(sentinels))
        try:
            await client.set("topology:sentinel-async", b"2")
            return await client.get("topology:sentinel-async")
        finally:
            await client.aclose()

    assert asyncio.run(through_asyncio()) == b"2"


@pytest.mark.parametrize("sentinel_password", [None, "wrong"])
def test_a_missing_or_wrong_sentinel_password_is_a_clear_error(
    sentinels: SentinelGroup, sentinel_password: str | None
) -> None:
    settings = sentinel_settings(sentinels, sentinel_password)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as refused:
        connect(settings, socket_timeout=2.0, connect_timeout=2.0).get("topology:sentinel")
    # At once: redis-py's retry asked each sentinel 11 times with backoff (~12 s for three).
    assert time.monotonic() - started < 2.0
    clear = explain(refused.value, settings.redis_url or "")
    assert isinstance(clear, RedisCredentialsError)
    assert "STREAMREC_REDIS_SENTINEL_PASSWORD" in str(clear) and SENTINEL_PASSWORD not in str(clear)

    async def through_asyncio() -> None:
        client = connect_async(settings, socket_timeout=2.0, connect_timeout=2.0)
        try:
            await client.get("topology:sentinel")
        finally:
            await client.aclose()

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as refused:
        asyncio.run(through_asyncio())
    assert time.monotonic() - started < 2.0
    assert isinstance(explain(refused.value, settings.redis_url or ""), RedisCredentialsError)


def write_until_it_succeeds(write: Callable[[int], object], killed_at: float) -> tuple[float, int]:
    """Call ``write(n)`` every 50 ms until one succeeds (at most FAILOVER_SECONDS * 2 after the
    kill); returns (seconds from the kill to that success, failed writes before it)."""
    failures, n = 0, 0
    while time.monotonic() - killed_at < 2 * FAILOVER_SECONDS:
        n += 1
        try:
            write(n)
            return time.monotonic() - killed_at, failures
        except (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.ReadOnlyError,
            redis.exceptions.ClusterError,
        ):
            failures += 1
            time.sleep(0.05)
    pytest.fail(f"writes did not resume within {2 * FAILOVER_SECONDS:.0f}s of the kill ({failures} failed)")


def test_a_sentinel_client_follows_a_failover(sentinels: SentinelGroup) -> None:
    store = connect(sentinel_settings(sentinels), socket_timeout=1.0, connect_timeout=1.0)
    store.set("topology:before", b"written before the kill")
    old, killed_at = sentinels.kill_primary()
    resumed, failures = write_until_it_succeeds(lambda n: store.set("topology:after", n), killed_at)
    new = sentinels.wait_for_promotion(old, timeout=FAILOVER_SECONDS)
    promoted = time.monotonic() - killed_at
    print(
        f"\nsentinel failover: {old.name} killed; writes resumed after {resumed:.2f}s "
        f"({failures} failed writes); {new.name} named primary by all sentinels by {promoted:.2f}s"
    )
    assert new is not old and resumed < FAILOVER_SECONDS
    with new.client(PASSWORD) as primary:  # the write went to the promoted replica
        assert primary.get("topology:after") is not None
        assert primary.info("replication")["role"] == "master"
    assert store.get("topology:before") == b"written before the kill"  # the replica had it
    store.close()


def test_a_cluster_client_follows_a_failover(cluster: RedisClusterServers) -> None:
    store = connect(Settings(redis_url=cluster.url), socket_timeout=1.0, connect_timeout=1.0)
    key = "topology:failover"
    store.set(key, b"before")
    old = cluster.primary_for(key)
    killed_at = cluster.kill(old)
    resumed, failures = write_until_it_succeeds(lambda n: store.set(key, n), killed_at)
    new = cluster.wait_for_promotion(old, timeout=FAILOVER_SECONDS)
    print(
        f"\ncluster failover: {old.name} killed; writes to its slots resumed after {resumed:.2f}s "
        f"({failures} failed writes); {new.name} serves them"
    )
    assert resumed < FAILOVER_SECONDS
    assert cluster.primary_for(key) is new
    # The old primary comes back as a replica of the new one; the cluster is whole again.
    cluster.restart(old)
    cluster.wait_until_ok(30.0)
    assert old in cluster.replicas_of(new)
    store.close()


def test_the_scorers_writes_go_on_through_a_cluster_failover(
    cluster: RedisClusterServers, tmp_path: Path
) -> None:
    # The scorer's own pipeline and retry (services/scorer/user_lists.py, redis_writer.py), writing users of every slot
    # range while a primary is killed: each write returns only once every list is in the cluster.
    scorer = ScorerService(Settings(kafka_bootstrap="127.0.0.1:1", redis_url=cluster.url, data_dir=tmp_path))
    keys = RedisKeys(scorer.settings.redis_prefix)
    users = [f"failover-user-{n}" for n in range(300)]

    def write(round_: int) -> None:
        scorer.user_lists.write(ScoredLists({user: b"%d" % round_ for user in users}, len(users), 0), "event")

    round_ = 0
    write(round_)
    old = cluster.primaries()[0]
    errors_before = REDIS_WRITE_ERRORS._value.get()
    killed_at = cluster.kill(old)
    round_ += 1
    write(round_)  # the first write after the kill: blocks while the failover lasts
    resumed = time.monotonic() - killed_at
    while time.monotonic() - killed_at < resumed + 2.0:  # and the writes go on
        round_ += 1
        write(round_)
        time.sleep(0.05)
    new = cluster.wait_for_promotion(old, timeout=FAILOVER_SECONDS)
    retried = REDIS_WRITE_ERRORS._value.get() - errors_before
    print(
        f"\nscorer on a cluster failover: {old.name} killed; the first write returned after "
        f"{resumed:.2f}s ({retried:.0f} retried attempts); {round_} rounds of {len(users)} lists"
    )
    # (The retried count may be 0: redis-py itself retries a command the cluster answered CLUSTERDOWN.)
    assert resumed < FAILOVER_SECONDS and scorer.writer.ok
    store = connect(Settings(redis_url=cluster.url))
    assert get_many(store, [keys.recs(user) for user in users]) == [b"%d" % round_] * len(users)
    store.close()
    scorer.close()
    cluster.restart(old)
    cluster.wait_until_ok(30.0)
    assert old in cluster.replicas_of(new)


def test_a_cluster_down_at_start_is_waited_for(tmp_path: Path) -> None:
    servers = RedisClusterServers(tmp_path / "cluster", password=PASSWORD)  # ports chosen, nothing runs
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1", redis_url=servers.url, data_dir=tmp_path / "data", redis_prefix="late"
    )
    keys = RedisKeys("late")
    # Built while no node answers: the scorer, both clients and the API start all the same.
    scorer = ScorerService(settings)
    client = RecommendationClient(settings=settings)
    app = create_app(settings)
    check_redis_access(settings)  # only logs that Redis is unreachable
    with pytest.raises(redis.ConnectionError, match="is unavailable"):
        client.get("u1")
    # The CLI says so in one line, without the password.
    cli = subprocess.run(
        [sys.executable, "-m", "streamrec", "recommend", "u1"],
        env={**os.environ, "STREAMREC_REDIS_URL": servers.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stderr
    assert cli.stderr.startswith("streamrec: error: Redis is unreachable (Redis Cluster 127.0.0.1:")
    assert cli.stderr.count("\n") == 1 and PASSWORD not in cli.stderr

    connected = threading.Thread(
        target=scorer.writer.retry, args=("connect to Redis", scorer.writer.client.ping)
    )
    with TestClient(app) as http:
        assert http.get("/readyz").status_code == 503
        assert http.get("/users/u1/recommendations").status_code == 503
        connected.start()  # the scorer's start: it waits for Redis
        time.sleep(1.0)
        assert connected.is_alive() and not scorer.writer.ok
        try:
            servers.start()
            connected.join(30)
            assert not connected.is_alive() and scorer.writer.ok
            # The same objects work now: the scorer writes, the clients and the API read.
            written = CachedList([("i1", 2.0), ("i2", 1.0)], "m-1", time.time(), "personal")
            scorer.user_lists.write(ScoredLists({"u1": written.encode()}, 1, 0), "event")
            assert client.get("u1").items == written.items  # type: ignore[union-attr]
            assert http.get("/readyz").status_code == 200
            body = http.get("/users/u1/recommendations").json()
            assert [row["item_id"] for row in body["items"]] == ["i1", "i2"]
            assert servers.primary_for(keys.recs("u1")).client(PASSWORD).exists(keys.recs("u1"))
        finally:
            scorer.request_stop()  # ends the waiting thread if the cluster never came up
            connected.join(10)
            client.close()
            scorer.close()
            servers.stop()
