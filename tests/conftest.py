"""Session-wide fixtures: one embedded stack (real broker, real Redis, real services) per run.

A Faust worker needs 10-30 s to join its group, so the stack starts once per test session and
the integration tests share it. Unit tests never touch it.

The shared stack, and the stacks test modules start of their own, run on Apache Kafka itself (one
KRaft node of streamrec.kafka_cluster, from the jars of scripts/fetch-kafka);
``STREAMREC_TEST_BROKER=embedded`` runs them on the embedded broker instead. The tests of what runs
on the embedded broker (`streamrec demo`, `streamrec dev`) and of the embedded broker itself keep
it either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from streamrec.processes import free_port
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings
from streamrec.stack import Stack

from support import LiveStack, TrainedStack, broker_of_its_own, chosen_broker, train_once


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that time a stack under load run first, and tests that change the served model run
    after those that check the first trained one (a stable sort keeps the rest in order).

    A timed test run later shares the 2 cores with every session stack started before it (idle
    brokers and services still poll, commit and gossip): the leader-lost test measured p50 760 ms
    before its kill there, against 316 ms alone, and missed its recovery bound.
    """
    items.sort(
        key=lambda item: (
            item.get_closest_marker("measures_latency") is None,
            item.get_closest_marker("changes_model") is not None,
        )
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an unknown STREAMREC_TEST_BROKER before any test runs."""
    chosen_broker()


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Settings for the shared stack's broker (tests/support.py, ``broker_of_its_own``)."""
    with broker_of_its_own(tmp_path_factory.mktemp("shared-broker")) as broker:
        yield broker


@pytest.fixture(scope="session")
def live_stack(
    tmp_path_factory: pytest.TempPathFactory, shared_broker: dict[str, str]
) -> Iterator[LiveStack]:
    """Embedded broker (or Apache Kafka: see ``shared_broker``) + Redis + ingest, scorer and api as
    real processes."""
    run_dir = tmp_path_factory.mktemp("stack")
    settings = Settings(
        **shared_broker,
        data_dir=run_dir / "data",
        partitions=2,
        popular_publish_seconds=1.0,
        scorer_batch_wait_ms=10,
        top_n=20,
        embedding_dim=32,
        epochs=8,
        api_port=free_port(),
        api_admin_token="test-admin-token",  # DELETE /users/{id} (tests/integration/test_erasure.py)
        log_level="INFO",
    )
    stack = Stack(settings, run_dir, ("ingest", "scorer", "api")).start()
    live = stack.settings
    try:
        yield LiveStack(stack, live, redis.Redis.from_url(live.redis_url or ""), RedisKeys(live.redis_prefix))
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def trained_stack(live_stack: LiveStack) -> TrainedStack:
    """Stream a synthetic dataset in, wait for ingest, train once via the CLI, wait for the scorer."""
    return train_once(live_stack)
