"""Erasing a user on the live stack: `streamrec users forget` and `DELETE /users/{id}`.

After a forget the user is nowhere: not in Redis (every key and value), not in the trainer's log
nor the newest model's training data, not in ingest's table (the changelog's last record for the
user is a tombstone; the erasure marker holds a hash, never the id). An event stamped before the
request that arrives afterwards is dropped; a later one starts a new history.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.erasure import forget_user
from streamrec.ingest.erasure import user_hash
from streamrec.publisher import Publisher
from streamrec.shared.kafka_config import client_config
from streamrec.shared.kafka_topics import INGEST_GROUP
from streamrec.shared.messages import decode_feature_batch
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.stack import Stack

from support import LiveStack, TrainedStack, broker_of_its_own, metric_total, on_each_redis, wait_for

pytestmark = pytest.mark.integration

# The tests of the session stack run on it (one redis-server) and on its twin on a Redis Cluster.
trained_stack = on_each_redis("trained_stack")

ADMIN_TOKEN = "test-admin-token"  # tests/conftest.py sets it as STREAMREC_API_ADMIN_TOKEN
USER_STATE_CHANGELOG = f"{INGEST_GROUP}-user_state-changelog"
MARKERS_CHANGELOG = f"{INGEST_GROUP}-erasure_markers-changelog"


def new_user() -> str:
    return f"erase-{uuid.uuid4().hex}"


def publish(live: LiveStack, user: str, items: list[str], timestamp: float) -> None:
    """Send one event per item for ``user``, a second apart from ``timestamp`` on."""
    with Publisher(settings=live.settings) as publisher:
        for n, item in enumerate(items):
            publisher.publish(user_id=user, item_id=item, event_type="click", timestamp=timestamp + n)


def read_topic(settings: Settings, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of ``topic`` now, as (partition, key, value), in each partition's order."""
    consumer = Consumer(
        client_config(settings, {"group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    try:
        metadata = consumer.list_topics(timeout=10).topics.get(topic)
        if metadata is None or not metadata.partitions:
            return []
        partitions = sorted(metadata.partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[int, bytes | None, bytes | None]] = []
        positions = dict.fromkeys(partitions, 0)
        # The listed end may be short of the log's (Tansu); a fetch past it brings the rest, so read
        # until the listed ends are reached and a poll then comes back empty.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            messages = consumer.consume(500, timeout=1.0)
            for message in messages:
                if message.error():
                    continue
                records.append((message.partition(), message.key(), message.value()))
                positions[message.partition()] = message.offset() + 1
            if not messages and all(positions[p] >= ends[p] for p in partitions):
                return records
        pytest.fail(f"could not read {topic} to its end")
    finally:
        consumer.close()


def redis_traces(live: LiveStack, user: str) -> list[str]:
    """Every Redis key whose name or value holds ``user``'s id."""
    needle = user.encode()
    found = []
    for key in live.redis.scan_iter(count=1000):
        kind = live.redis.type(key).decode()
        if kind == "string":
            values = [live.redis.get(key) or b""]
        elif kind == "hash":
            values = [part for pair in live.redis.hgetall(key).items() for part in pair]
        elif kind == "set":
            values = list(live.redis.smembers(key))
        elif kind == "zset":
            values = list(live.redis.zrange(key, 0, -1))
        elif kind == "list":
            values = list(live.redis.lrange(key, 0, -1))
        else:
            values = [live.redis.dump(key) or b""]
        if needle in key or any(needle in value for value in values):
            found.append(key.decode(errors="replace"))
    return found


def trainer_log(settings: Settings) -> Path:
    return settings.data_dir / "trainer" / "events.sqlite"


def logged_users(settings: Settings) -> set[str]:
    with sqlite3.connect(trainer_log(settings)) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT user_id FROM events")}


def records_by_partition(
    settings: Settings, topic: str, is_key: Callable[[bytes], bool]
) -> dict[int, list[bytes | None]]:
    """The values of ``topic``'s records whose key ``is_key``, by partition, in order."""
    records: dict[int, list[bytes | None]] = {}
    for partition, key, value in read_topic(settings, topic):
        if key is not None and is_key(key):
            records.setdefault(partition, []).append(value)
    return records


def state_records(settings: Settings, user: str) -> dict[int, list[bytes | None]]:
    """The values of ``user``'s records in the user_state changelog, by partition, in order."""
    keys = {user.encode(), orjson.dumps(user)}
    return records_by_partition(settings, USER_STATE_CHANGELOG, keys.__contains__)


def has_state(settings: Settings, user: str) -> bool:
    return any(value is not None for values in state_records(settings, user).values() for value in values)


def only_tombstones_last(settings: Settings, user: str) -> bool:
    """True if the user's last record is a tombstone on every partition that has one."""
    records = state_records(settings, user)
    return bool(records) and all(values[-1] is None for values in records.values())


def latest_snapshot(settings: Settings, user: str) -> tuple[list[str], int] | None:
    """(history, event_count) of the user's latest features message, or None."""
    latest = None
    for _, _, value in read_topic(settings, settings.topic_user_features):
        for snapshot in decode_feature_batch(value).users:
            if snapshot.user_id == user:
                latest = (snapshot.history, snapshot.event_count)
    return latest


@pytest.mark.changes_model  # trains (and may promote) a model after the forget
def test_forget_via_the_cli_leaves_no_trace_and_a_new_event_starts_a_new_history(
    trained_stack: TrainedStack,
) -> None:
    trained = trained_stack
    live = trained.live
    settings = live.settings
    user = new_user()
    items = sorted(set(trained.events["item_id"].astype(str)))[:3]
    publish(live, user, items, time.time() - 100)
    wait_for(lambda: live.cached(user), 60, "the user's first list")
    assert live.cli("train", "--once").returncode == 0  # the trainer's log takes the user's events
    assert user in logged_users(settings)
    wait_for(lambda: has_state(settings, user), 60, "the user's state in the changelog")

    before = time.time()
    result = live.cli("users", "forget", user)
    assert result.returncode == 0, result.stderr[-2000:]
    assert user in result.stdout
    wait_for(lambda: not redis_traces(live, user), 60, "the user's list to be deleted from Redis")

    # The ingest table: the last record of the user's key on each partition is a tombstone, and
    # the erasure marker's changelog holds the user's hash, never the id.
    wait_for(lambda: only_tombstones_last(settings, user), 60, "a tombstone in the changelog")
    markers = read_topic(settings, MARKERS_CHANGELOG)
    assert markers, "no erasure marker was written"
    assert not [record for record in markers if user.encode() in (record[1] or b"") + (record[2] or b"")]

    # The trainer's log and the newest model's training data; the raw file bytes too (deleted rows
    # are zeroed, the WAL is truncated).
    result = live.cli("train", "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert user not in logged_users(settings)
    for path in trainer_log(settings).parent.glob("events.sqlite*"):
        assert user.encode() not in path.read_bytes(), f"{path.name} still holds the user's id"
    registry = ModelRegistry(settings.model_dir)
    newest = registry.manifest(registry.newest_version() or "")
    assert newest.created_at > before
    with sqlite3.connect(trainer_log(settings)) as db:
        logged = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert newest.data["events"] == logged  # it was trained on the log searched above

    # The scorer's memory: after a model swap it re-scores the users it remembers; an erased user
    # must not be among them.
    if registry.promoted_version() == newest.version:
        other = str(trained.events["user_id"].iloc[-1])
        wait_for(
            lambda: getattr(live.cached(other), "model_version", None) == newest.version,
            90,
            "the scorer to re-score the users it remembers with the new model",
        )
    assert not redis_traces(live, user)

    # An event stamped before the request, arriving now: dropped (counted), no list comes back.
    port = live.stack.ops_ports["ingest"]
    erased = metric_total(port, "streamrec_ingest_events_total", outcome="erased")
    publish(live, user, [items[0]], before - 50)
    wait_for(
        lambda: metric_total(port, "streamrec_ingest_events_total", outcome="erased") > erased,
        60,
        "ingest to drop the in-flight event",
    )
    assert not redis_traces(live, user)

    # A later event starts a new history of that event alone.
    publish(live, user, [items[1]], time.time())
    fresh = wait_for(lambda: live.cached(user), 60, "the user's new list")
    assert items[1] not in [item for item, _ in fresh.items]  # type: ignore[attr-defined]
    assert latest_snapshot(settings, user) == ([items[1]], 1)


def test_forget_via_http_needs_the_admin_token(trained_stack: TrainedStack) -> None:
    live = trained_stack.live  # no model needed; trained_stack runs the test on both Redis
    user = new_user()
    publish(live, user, ["i1", "i2"], time.time() - 10)
    wait_for(lambda: live.cached(user), 60, "the user's list")
    base = f"http://{live.settings.api_host}:{live.settings.api_port}"

    assert httpx.get(f"{base}/users/{user}/recommendations").status_code == 200  # reads stay open
    missing = httpx.delete(f"{base}/users/{user}")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.delete(f"{base}/users/{user}", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert live.cached(user) is not None  # refused requests erased nothing

    accepted = httpx.delete(f"{base}/users/{user}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["user_id"] == user and body["status"] == "accepted"
    assert body["topic"] == live.settings.topic_control
    wait_for(lambda: not redis_traces(live, user), 60, "the user's list to be deleted from Redis")
    assert httpx.get(f"{base}/users/{user}/recommendations").json()["source"] == "fallback"


# --- the hold, on a stack of its own (a short hold, and a crash of ingest) ------------------------

HOLD_SECONDS = 60.0


@pytest.fixture(scope="module")
def short_hold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """Broker, Redis, ingest and scorer with a one-minute erasure hold (the session stack's is 24 h)."""
    run_dir = tmp_path_factory.mktemp("erasure-hold")
    with broker_of_its_own(run_dir) as broker:
        settings = Settings(
            **broker,
            data_dir=run_dir / "data",
            partitions=2,
            popular_publish_seconds=1.0,
            erasure_hold_seconds=HOLD_SECONDS,
        )
        stack = Stack(settings, run_dir, ("ingest", "scorer")).start()
        live = stack.settings
        try:
            yield LiveStack(
                stack, live, redis.Redis.from_url(live.redis_url or ""), RedisKeys(live.redis_prefix)
            )
        finally:
            stack.stop()


def wait_ready(live: LiveStack, name: str) -> None:
    def ready() -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{live.stack.ops_ports[name]}/readyz", timeout=2).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, f"{name} to be ready")


def markers_by_partition(settings: Settings, user: str) -> dict[int, list[bytes | None]]:
    """The values of the user's markers in the erasure_markers changelog, by partition, in order."""
    key = user_hash(user).encode()
    return records_by_partition(settings, MARKERS_CHANGELOG, lambda k: key in k)


def committed_to_the_end(settings: Settings, group: str, topic: str) -> bool:
    """True if ``group`` has committed every partition of ``topic`` up to its end."""
    consumer = Consumer(client_config(settings, {"group.id": group, "enable.auto.commit": False}))
    try:  # reads the group's offsets only: this consumer never joins the group
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(
            tp.offset >= consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            for tp in committed
        )
    finally:
        consumer.close()


def test_the_marker_survives_a_crash_and_expires_after_the_hold(short_hold: LiveStack) -> None:
    live = short_hold
    wait_ready(live, "ingest")
    user = new_user()
    publish(live, user, ["i1", "i2"], time.time() - 100)
    wait_for(lambda: live.cached(user), 90, "the user's list")

    request = forget_user(user, live.settings)  # the Python entry point
    wait_for(lambda: not redis_traces(live, user), 60, "the user's list to be deleted")
    wait_for(
        lambda: len(markers_by_partition(live.settings, user)) == live.settings.partitions,
        30,
        "the marker in its changelog, on every partition",
    )
    # Once the request's offsets are committed the restarted worker never sees it again: the marker
    # must come back from the changelog alone, and expire with no event of its partition since.
    wait_for(
        lambda: committed_to_the_end(live.settings, INGEST_GROUP, live.settings.topic_control),
        60,
        "ingest to commit the forget request",
    )

    # kill -9: the restarted worker rebuilds its tables from the changelogs, the marker included.
    child = live.stack.children["ingest"]
    os.kill(child.pid, signal.SIGKILL)
    child.popen.wait(10)
    live.stack.supervise()
    wait_ready(live, "ingest")
    port = live.stack.ops_ports["ingest"]
    publish(live, user, ["i3"], request.requested_at - 10)  # in flight: stamped before the request
    wait_for(
        lambda: metric_total(port, "streamrec_ingest_events_total", outcome="erased") >= 1,
        60,
        "the restarted ingest to drop the in-flight event",
    )
    assert not redis_traces(live, user)

    # After the hold the marker is deleted on every partition (a tombstone each, also where no
    # event came after the restart), and the hold no longer applies.
    wait_for(
        lambda: all(values[-1] is None for values in markers_by_partition(live.settings, user).values()),
        4 * HOLD_SECONDS,
        "the marker to expire on every partition",
    )
    publish(live, user, ["i4"], request.requested_at - 5)
    wait_for(lambda: live.cached(user), 60, "a list from an event after the hold")
