"""The scorer's Redis retry (``ScorerService._retry``), no server: what a failover of a Redis
Cluster or a Sentinel group raises is waited out; refusals and commands no cluster runs are not.

The same retry against a real cluster whose primary is killed is in
tests/integration/test_redis_topologies.py.
"""

from __future__ import annotations

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

from streamrec.scorer import service as scorer_module
from streamrec.scorer.service import ScorerService
from streamrec.shared.redis_connection import (
    RedisClusterUnavailable,
    RedisCredentialsError,
    RedisPermissionError,
    cluster_error,
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
def scorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScorerService]:
    """A scorer that never reaches a server (its client connects lazily), retrying without waiting."""
    monkeypatch.setattr(scorer_module, "RETRY_FIRST_DELAY_SECONDS", 0.001)
    monkeypatch.setattr(scorer_module, "RETRY_MAX_DELAY_SECONDS", 0.001)
    service = ScorerService(
        Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://:s3cret@127.0.0.1:1/0", data_dir=tmp_path)
    )
    yield service
    service.close()


def failing(errors: list[BaseException], result: str = "written") -> tuple[Callable[[], str], list[int]]:
    """An action raising each of ``errors`` in turn, then returning ``result``; and its call count."""
    calls = [0]

    def action() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return result

    return action, calls


def test_a_failover_is_waited_out(scorer: ScorerService) -> None:
    action, calls = failing(FAILOVER_ERRORS)
    assert scorer._retry("write 3 recommendation lists", action) == "written"
    assert calls[0] == len(FAILOVER_ERRORS) + 1 and scorer.redis_ok


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
    scorer: ScorerService, error: BaseException, raised: type[BaseException]
) -> None:
    action, calls = failing([error])
    with pytest.raises(raised) as caught:
        scorer._retry("write 3 recommendation lists", action)
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
