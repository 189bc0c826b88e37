"""The integration tests' Redis beyond one server (issue 27): a Redis Cluster for the session, and
a stack whose services use it, each started at the first test that asks for it.

- ``redis_cluster``: 6 nodes (3 primaries, 3 replicas) of streamrec.redis_servers. The read tests
  (``redis_url``) and the cluster stack share it, each under its own key prefix: tests clear their
  own prefix's keys, never the whole cluster. Fault tests (which kill nodes) start their own.
- ``redis_url``: a module's Redis, once one redis-server and once that cluster (its tests run on
  both).
- ``cluster_live_stack`` / ``cluster_trained_stack``: the session stack's twins (same settings, an
  embedded broker of their own) with every service on the cluster; a module runs its tests of the
  session stack on both with ``support.on_each_redis`` (``redis_topology`` chooses).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.embedded import start_redis
from streamrec.processes import free_port
from streamrec.redis_servers import RedisClusterServers, cluster_tools_missing
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.stack import Stack

from support import REDIS_TOPOLOGIES, LiveStack, TrainedStack, train_once


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 6-node Redis Cluster for the whole session (skipped without redis-cli)."""
    if reason := cluster_tools_missing():
        pytest.skip(reason)
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=REDIS_TOPOLOGIES)
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module's Redis: a redis-server of its own, then the session's Redis Cluster."""
    if request.param == "cluster":
        yield request.getfixturevalue("redis_cluster").url
        return
    child, url = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture(params=REDIS_TOPOLOGIES)
def redis_topology(request: pytest.FixtureRequest) -> str:
    """Which stack a test of ``support.on_each_redis`` runs on: "one server", then "cluster"."""
    return request.param


@pytest.fixture(scope="session")
def cluster_live_stack(
    tmp_path_factory: pytest.TempPathFactory, live_stack: LiveStack, redis_cluster: RedisClusterServers
) -> Iterator[LiveStack]:
    """The session stack's settings, with every service on the cluster (and an embedded broker)."""
    run_dir = tmp_path_factory.mktemp("cluster-stack")
    settings = live_stack.settings.model_copy(
        update={"kafka_bootstrap": None, "redis_url": redis_cluster.url, "api_port": free_port()}
    ).with_data_dir(run_dir / "data")
    stack = Stack(settings, run_dir, ("ingest", "scorer", "api")).start()
    live = stack.settings
    store = connect(live)
    try:
        yield LiveStack(stack, live, store, RedisKeys(live.redis_prefix))  # type: ignore[arg-type]
    finally:
        store.close()
        stack.stop()


@pytest.fixture(scope="session")
def cluster_trained_stack(cluster_live_stack: LiveStack) -> TrainedStack:
    """The cluster stack after the same synthetic stream and one training as ``trained_stack``."""
    return train_once(cluster_live_stack)
