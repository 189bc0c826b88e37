"""The Redis a benchmark reads or writes: one redis-server, a Redis Cluster or a Sentinel group.

Each is started on free loopback ports under the benchmark's run folder and stopped on exit
(``streamrec.redis_servers`` for the cluster and the group, the embedded redis-server for one).
A benchmark that compares them runs its measurement once per topology and reports each against
its own baseline (e.g. a raw ``GET`` of that same Redis), in the same invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.stack import embedded_redis
from streamrec.redis_servers import RedisClusterServers, SentinelGroup, cluster_tools_missing


@contextmanager
def _cluster(run_dir: Path) -> Iterator[str]:
    with RedisClusterServers(run_dir / "redis-cluster") as cluster:
        yield cluster.url


@contextmanager
def _sentinel(run_dir: Path) -> Iterator[str]:
    with SentinelGroup(run_dir / "redis-sentinel") as group:
        yield group.url


@dataclass(frozen=True)
class RedisTopology:
    """One kind of Redis a benchmark can start: its name (file names), its words (titles) and how
    to start it (a context manager yielding ``STREAMREC_REDIS_URL``)."""

    name: str
    label: str
    start: Callable[[Path], AbstractContextManager[str]]
    needs_cluster_tools: bool = False

    def missing(self) -> str | None:
        """Why this topology cannot be started on this machine, or None."""
        return cluster_tools_missing() if self.needs_cluster_tools else None

    def fragment(self, stem: str) -> str:
        """A file name stem of this topology (``read-latency-cdf-cluster``); one server's is ``stem``."""
        return stem if self is ONE_SERVER else f"{stem}-{self.name}"


ONE_SERVER = RedisTopology("one", "one redis-server", embedded_redis)
CLUSTER = RedisTopology(
    "cluster", "Redis Cluster, 3 primaries + 3 replicas", _cluster, needs_cluster_tools=True
)
SENTINEL = RedisTopology("sentinel", "Sentinel group, 1 primary + 1 replica, 3 sentinels", _sentinel)
TOPOLOGIES = (ONE_SERVER, CLUSTER, SENTINEL)
