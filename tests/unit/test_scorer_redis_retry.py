"""The scorer's Redis retry (``RedisWriter.retry``), no server: what a failover of a Redis
Cluster or a Sentinel group raises is waited out; refusals and commands no cluster runs are not;
many keys are written in one pipeline, retried whole.

The same retry against a real cluster whose primary is killed is in
tests/integration/test_redis_topologies.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.sentinel
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    CrossSlotTransactionError,
    MasterDownError,
    NoPermissionError,
    RedisClusterException,
    SlotNotCoveredError,
)

from streamrec.scorer.redis_writer import RedisWriter, RetryPolicy, Stopped
from streamrec.shared.redis_connection import (
    RedisClusterUnavailable,
    RedisCredentialsError,
    RedisPermissionError,
    cluster_error,
    connect,
    explain,
)
from streamrec.shared.settings import Settings

CLUSTER_URL = "redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001"


def caused(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` raised ``from cause``, as redis-py raises it."""
    error.__cause__ = cause
    return error


# What redis-py raised while a cluster primary or a Sentinel primary was killed and replaced.
FAILOVER_ERRORS: list[BaseException] = [
    redis.ConnectionError("Error 111 connecting to 127.0.0.1:7001. Connection refused."),
    redis.TimeoutError("Timeout reading from 127.0.0.1:7001"),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
    SlotNotCoveredError('Slot "5461" is not covered by the cluster.'),
    caused(
        RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: x"
        ),
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."),
    ),
    RedisClusterException(
        "All slots are not covered after query all startup_nodes. 10923 of 16384 covered..."
    ),
    RedisClusterException("startup_nodes could not agree on a valid slots cache: a vs b on slot: 3"),
    redis.ReadOnlyError("You can't write against a read only replica."),
    redis.sentinel.MasterNotFoundError("No master found for 'streamrec' : ConnectionError(...)"),
]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RedisWriter]:
    """The scorer's writer, never reaching a server (its client connects lazily), retrying without waiting."""
    url = "redis://:s3cret@127.0.0.1:1/0"
    client = connect(Settings(redis_url=url, data_dir=tmp_path), url=url)
    redis_writer = RedisWriter(
        client, url, threading.Event(), RetryPolicy(first_delay_s=0.001, max_delay_s=0.001)
    )
    yield redis_writer
    redis_writer.close()


def failing(errors: list[BaseException], result: str = "written") -> tuple[Callable[[], str], list[int]]:
    """An action raising each of ``errors`` in turn, then returning ``result``; and its call count."""
    calls = [0]

    def action() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return result

    return action, calls


def test_a_failover_is_waited_out(writer: RedisWriter) -> None:
    action, calls = failing(FAILOVER_ERRORS)
    assert writer.retry("write 3 recommendation lists", action) == "written"
    assert calls[0] == len(FAILOVER_ERRORS) + 1 and writer.ok


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (AuthenticationError("invalid username-password pair or user is disabled."), RedisCredentialsError),
        (
            caused(
                RedisClusterException(
                    "Redis Cluster cannot be connected. Please provide at least one reachable node"
                ),
                AuthenticationError("invalid username-password pair or user is disabled."),
            ),
            RedisCredentialsError,
        ),
        (NoPermissionError("this user has no permissions to run the 'set' command"), RedisPermissionError),
        (RedisClusterException("DEL - all keys must map to the same key slot"), RedisClusterException),
        (
            CrossSlotTransactionError("Cannot watch or send commands on different slots"),
            CrossSlotTransactionError,
        ),
        (
            redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            redis.ResponseError,
        ),
    ],
)
def test_refusals_and_bugs_are_raised_at_once(
    writer: RedisWriter, error: BaseException, raised: type[BaseException]
) -> None:
    action, calls = failing([error])
    with pytest.raises(raised) as caught:
        writer.retry("write 3 recommendation lists", action)
    assert calls[0] == 1
    assert "s3cret" not in str(caught.value)


def test_cluster_outages_become_connection_errors_that_name_the_cluster() -> None:
    for error in FAILOVER_ERRORS:
        if isinstance(error, RedisClusterException):
            clear = explain(error, CLUSTER_URL)
            assert isinstance(clear, RedisClusterUnavailable) and isinstance(clear, redis.ConnectionError)
            assert str(clear).startswith("Redis Cluster 127.0.0.1:7000,127.0.0.1:7001 is unavailable: ")
            assert clear.__cause__ is error and "s3cret" not in str(clear)
    bug = RedisClusterException("MGET - all keys must map to the same key slot")
    assert cluster_error(bug, "Redis Cluster h:1") is bug and explain(bug, CLUSTER_URL) is bug


class Pipelines:
    """Stands in for the Redis client: records each pipeline's SETs, failing the first ``failures``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.executed: list[list[tuple[bytes | str | int, ...]]] = []
        self.commands: list[tuple[bytes | str | int, ...]] = []

    def pipeline(self, transaction: bool) -> Pipelines:
        assert not transaction
        self.commands = []
        return self

    def execute_command(self, *args: bytes | str | int) -> None:
        self.commands.append(args)

    def execute(self) -> None:
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.executed.append(self.commands)


def test_many_keys_are_written_in_one_pipeline_retried_whole() -> None:
    client = Pipelines(failures=2)
    writer = RedisWriter(client, "redis://127.0.0.1:6379/0", threading.Event(), RetryPolicy(0.001, 0.001))  # type: ignore[arg-type]
    writer.set_many("write 2 recommendation lists", {"recs:a": b"1", "recs:b": b"2"}, ttl=60)
    assert client.executed == [[("SET", "recs:a", b"1", "EX", 60), ("SET", "recs:b", b"2", "EX", 60)]]
    assert writer.ok
    writer.set_many("write 0 lists", {})  # nothing to write: no pipeline
    assert len(client.executed) == 1
    writer.set_many("write 1 recommendation list", {"recs:c": b"3"})  # no TTL: no EX
    assert client.executed[-1] == [("SET", "recs:c", b"3")]


def test_a_stop_ends_the_retry() -> None:
    stopping = threading.Event()
    stopping.set()
    writer = RedisWriter(
        Pipelines(failures=1), "redis://127.0.0.1:6379/0", stopping, RetryPolicy(0.001, 0.001)
    )  # type: ignore[arg-type]
    with pytest.raises(Stopped):
        writer.set_many("write 1 recommendation lists", {"recs:a": b"1"})
    assert not writer.ok  # readiness says Redis is unreachable
