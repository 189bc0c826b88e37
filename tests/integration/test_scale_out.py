"""Two ingest workers and two scorers share the partitions: every event counts once, every user is served.

A stack of its own (its own broker, Apache Kafka unless ``STREAMREC_TEST_BROKER=embedded``, and
Redis) runs ingest-1, ingest-2, scorer-1 and scorer-2. The same events are replayed into it and into
the session's single-worker stack; the final features of every user must be identical in both. Then
scorer-2 leaves, and a new model must still reach the users of the partitions scorer-1 took over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamrec.processes import free_port
from streamrec.shared.cached_list import CachedList
from streamrec.shared.kafka_topics import INGEST_GROUP, SCORER_GROUP
from streamrec.shared.messages import decode_feature_batch
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.stack import Stack
from streamrec.synthetic import generate

from support import LiveStack, TrainedStack, broker_of_its_own, group_members_with_partitions, wait_for

pytestmark = pytest.mark.integration

WORKERS = {"ingest": 2, "scorer": 2}


@pytest.fixture(scope="module")
def scaled_stack(tmp_path_factory: pytest.TempPathFactory, live_stack: LiveStack) -> Iterator[LiveStack]:
    run_dir = tmp_path_factory.mktemp("scaled")
    with broker_of_its_own(run_dir) as broker:
        settings = live_stack.settings.model_copy(
            update={"kafka_bootstrap": None, "redis_url": None, "api_port": free_port(), **broker}
        ).with_data_dir(run_dir / "data")
        stack = Stack(settings, run_dir, ("ingest", "scorer"), replicas=WORKERS).start()
        live = stack.settings
        try:
            # Every worker holds its partitions before the stream: this test counts events, and a
            # rebalance after a first worker took them all would move work mid-test.
            for group, workers in ((INGEST_GROUP, WORKERS["ingest"]), (SCORER_GROUP, WORKERS["scorer"])):
                wait_for(
                    lambda group=group, workers=workers: (
                        group_members_with_partitions(live, group) == workers
                    ),
                    120,
                    f"{workers} members of {group} with partitions",
                )
            yield LiveStack(
                stack, live, redis.Redis.from_url(live.redis_url or ""), RedisKeys(live.redis_prefix)
            )
        finally:
            stack.stop()


def final_features(live: LiveStack, prefix: str, expected_users: int) -> dict[str, tuple[int, list[str]]]:
    """Read the user-features topic from the start: each user's last (event_count, history)."""
    consumer = Consumer({"bootstrap.servers": live.settings.kafka_bootstrap, "group.id": "unused"})
    topic = live.settings.topic_user_features
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(live.settings.partitions)])
    latest: dict[str, tuple[int, list[str]]] = {}
    idle_since = time.monotonic()
    deadline = time.monotonic() + 120
    # Messages of one user are on one partition, in order: the last one read is the final state.
    while time.monotonic() < deadline and (len(latest) < expected_users or time.monotonic() - idle_since < 5):
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        idle_since = time.monotonic()
        for user in decode_feature_batch(message.value()).users:
            if user.user_id.startswith(prefix):
                latest[user.user_id.removeprefix(prefix)] = (user.event_count, user.history)
    consumer.close()
    return latest


def metric_total(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_two_ingest_workers_and_two_scorers_count_every_event_once(
    scaled_stack: LiveStack, trained_stack: TrainedStack
) -> None:
    events = generate(users=150, items=100, clusters=5, events_per_user=(4, 12), seed=21)
    users = sorted(events.user_id.unique())
    scaled_stack.stream_in(events, "scale")
    single = trained_stack.live  # the session stack: one ingest worker, one scorer
    single.stream_in(events.assign(user_id="single-" + events.user_id), "scale-single")

    scaled = final_features(scaled_stack, "", len(users))
    reference = final_features(single, "single-", len(users))
    assert sorted(scaled) == sorted(reference) == users
    counts = events.groupby("user_id").size()
    for user in users:
        assert scaled[user] == reference[user], (
            f"{user}: two workers {scaled[user]} != one worker {reference[user]}"
        )
        assert scaled[user][0] == counts[user]  # exactly once

    # Both workers of each kind took part.
    ports = scaled_stack.stack.ops_ports
    for name in ("ingest-1", "ingest-2"):
        assert metric_total(ports[name], "streamrec_ingest_events_total") > 0, f"{name} processed nothing"

    result = scaled_stack.cli("train", "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    version = ModelRegistry(scaled_stack.settings.model_dir).promoted_version()
    assert version is not None

    def all_served() -> bool:
        lists = [scaled_stack.cached(user) for user in users]
        return all(cached is not None and cached.model_version == version for cached in lists)

    wait_for(all_served, 120, "every user to get recommendations from the trained model")
    for name in ("scorer-1", "scorer-2"):
        assert metric_total(ports[name], "streamrec_scorer_lists_total") > 0, f"{name} wrote nothing"

    # Similar items: one scorer (the owner of partition 0) writes every item's list, once.
    wait_for(
        lambda: (raw := scaled_stack.redis.get(scaled_stack.keys.similar_model)) and raw.decode() == version,
        120,
        f"the similar lists of {version}",
    )
    vocabulary = ModelRegistry(scaled_stack.settings.model_dir).vocabulary(version)
    stored = scaled_stack.redis.mget([scaled_stack.keys.similar(item) for item in vocabulary])
    assert all(CachedList.decode(raw).model_version == version for raw in stored)  # type: ignore[arg-type]

    def wrote_them(name: str) -> bool:
        lines = (scaled_stack.stack.run_dir / f"{name}.log").read_text().splitlines()
        entries = [orjson.loads(line) for line in lines if line.startswith("{")]
        return any(
            e.get("msg") == "similar items written" and e.get("model_version") == version for e in entries
        )

    assert [name for name in ("scorer-1", "scorer-2") if wrote_them(name)] in (["scorer-1"], ["scorer-2"])

    # A scorer leaves: the other takes its partitions and recalls their users from the features
    # topic, so the next model reaches them too, though none of them acts again.
    scaled_stack.stack.children.pop("scorer-2").stop()
    wait_for(
        lambda: group_members_with_partitions(scaled_stack.settings, SCORER_GROUP) == 1,
        120,
        "scorer-1 alone in its group",
    )
    result = scaled_stack.cli("train", "--once", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    newer = orjson.loads(result.stdout)["version"]
    assert newer != version
    if ModelRegistry(scaled_stack.settings.model_dir).promoted_version() != newer:  # the gate's call
        promoted = scaled_stack.cli("models", "promote", newer)
        assert promoted.returncode == 0, promoted.stderr[-3000:]
    version = newer
    wait_for(all_served, 120, f"every user's list from {newer}, those of scorer-2's partitions included")
