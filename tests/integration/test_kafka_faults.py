"""Faults only a real broker has, on Apache Kafka itself (streamrec.kafka_cluster): each test ends
with nothing lost.

"Nothing lost": every accepted event is in its user's features (the user's last features on
``streamrec.user-features`` equal an exactly-once run of ingest's ``apply_event``), in the user's
next list (the scorers' committed offsets reach the end of the features and every list was written
after the user's last features, none of the user's items in it), and in the trainer's log exactly
once (its SQLite log read directly once it has read the features to their end).

1. **A broker restart.** One node; kill -9 of the broker in the middle of a paced stream, restarted
   on its log dir. The publisher counts only what Kafka acknowledged and publishes a chunk again
   (same event ids: ingest drops repeats) when it was not. About 1 minute.
2. **Compaction.** Ingest's changelogs compacted by the broker's log cleaner (their segments roll
   every 200 ms, the cleaner looks every 200 ms and cleans at once), until they have offset gaps;
   ingest stopped, its local tables wiped, restarted: it restores them from the compacted
   changelogs, and one more event per user gives the features of an exactly-once run. About 1
   minute.
3. **Retention.** Ingest and the trainer stopped; events published for the users of partition 0,
   then partition 0 of the input, of ingest's user_state changelog and of the user features
   emptied by DeleteRecords (low watermark = high watermark; the changelog made
   ``compact,delete`` first: Kafka deletes no records of a compact-only topic); the trainer's log
   wiped. Ingest comes back and goes on (from the input's new start: the expired events are gone,
   every other one is counted once); the trainer rebuilds its log from what the features topic
   still holds and logs how many messages of partition 0 it could not read. About 1 minute.
4. **A leader lost.** Three nodes, streamrec's topics at replication factor 3 (``min.insync.replicas``
   2, the cluster's default), 1,000 events/s, one event per user (bench/freshness.py's pacing and
   its matching of an event to the next rewrite of its user's list), after 40 s of the same stream
   over other users to warm the brokers' JVMs up; kill -9 of the
   node leading the most input partitions. No manual step: the stream goes on, and the time from
   the kill until every second's p99 freshness is back within its bound (500 ms, or twice the p99
   before the kill where the machine does not keep that) is measured and printed (the issue's
   target, and the test's limit: 30 s). The node restarts and rejoins every ISR. About 3.5
   minutes.
5. **Workers lost.** Three nodes, streamrec's topics at replication factor 3; two ingest workers
   and two scorers; kill -9 of one of each in the middle of a paced stream (each had done work);
   not restarted: the others take over their partitions, and nothing is lost. About 1.5 minutes.

Each test starts a Kafka and a stack (ingest, scorer, trainer, an embedded Redis) of its own. The
trainer only keeps its log: no training cycle competes for the two cores.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
import redis
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from bench.freshness.list_rewrites import ListRewrites
from bench.freshness.load import paced
from bench.freshness.tracker import UpdateTracker
from streamrec.ingest.rekeying import partition_for
from streamrec.kafka_cluster import ApacheKafka
from streamrec.processes import ChildProcess
from streamrec.publisher import Publisher, dataset_events, producer_config, publish_stream
from streamrec.shared.cached_list import CachedList
from streamrec.shared.events import Interaction, parse_event
from streamrec.shared.kafka_config import PublishError
from streamrec.shared.kafka_topics import INGEST_GROUP, SCORER_GROUP
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings
from streamrec.stack import Stack
from streamrec.synthetic import generate
from streamrec.trainer.event_store import DB_FILE, log_directory

from support import (
    FeatureReader,
    LiveStack,
    expected_features,
    metric_total,
    prefixed,
    require_apache_kafka,
    touch_events,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SERVICES = ("ingest", "scorer", "trainer")
READY_TIMEOUT = 120.0
SETTLE_TIMEOUT = 180.0  # for everything published to reach features, lists and the trainer's log


@pytest.fixture(autouse=True)
def _kafka_fetched() -> None:
    require_apache_kafka()


# --- a stack on Apache Kafka ----------------------------------------------------------------------


@dataclass
class KafkaStack:
    """Apache Kafka, the stack on it, and the handles to break them."""

    kafka: ApacheKafka
    live: LiveStack

    @property
    def stack(self) -> Stack:
        return self.live.stack

    @property
    def settings(self) -> Settings:
        return self.live.settings

    def child(self, name: str) -> ChildProcess:
        return self.stack.children[name]

    def port(self, name: str) -> int:
        return self.stack.ops_ports[name]

    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.stack.children.items()}

    def kill9(self, name: str) -> None:
        """SIGKILL a service instance: no handler runs, nothing is flushed or committed."""
        child = self.child(name)
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait(10)

    def ready(self, name: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port(name)}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, *names: str, timeout: float = READY_TIMEOUT) -> None:
        for name in names or tuple(self.stack.children):
            wait_for(lambda name=name: self.ready(name), timeout, f"{name} to be ready")  # type: ignore[misc]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name}:\n{child.log_tail(lines)}" for name, child in self.stack.processes().items()
        )


@contextmanager
def kafka_stack(
    run_dir: Path,
    *,
    nodes: int = 1,
    server_properties: Mapping[str, str | int | float | bool] | None = None,
    replicas: Mapping[str, int] | None = None,
    **settings: Any,
) -> Iterator[KafkaStack]:
    """Apache Kafka of ``nodes`` nodes and ingest, scorer and trainer on it, every instance ready."""
    kafka = ApacheKafka(run_dir / "kafka", nodes=nodes, server_properties=server_properties)
    stack: Stack | None = None
    try:
        kafka.start()
        base = Settings(
            kafka_bootstrap=kafka.bootstrap,
            partitions=2,
            replication_factor=min(nodes, 3),
            popular_publish_seconds=1.0,
            scorer_batch_wait_ms=10,
            top_n=20,
            # The trainer only keeps its event log here: no training cycle competes for the CPU.
            train_trigger="all",  # both conditions, neither ever met
            train_min_new_events=10**9,
            train_interval_seconds=10**6,
            log_level="INFO",
        )
        stack = Stack(
            base.model_copy(update=settings).with_data_dir(run_dir / "data"), run_dir, SERVICES, replicas
        ).start()
        live = stack.settings
        handle = KafkaStack(
            kafka,
            LiveStack(stack, live, redis.Redis.from_url(live.redis_url or ""), RedisKeys(live.redis_prefix)),
        )
        handle.wait_ready()
        yield handle
    finally:
        if stack is not None:
            stack.stop()
        kafka.stop()


# --- nothing lost -----------------------------------------------------------------------------------


def high_watermarks(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> log end offset of ``topic``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        }
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Partition -> offset ``group`` committed on ``topic`` (-1 where none); joins no group."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def trainer_log(settings: Settings) -> tuple[dict[int, int], Counter[tuple[str, str, float]]]:
    """The trainer's log as stored: its next offset per partition, and its events as a multiset of
    (user, item, timestamp)."""
    path = log_directory(settings) / DB_FILE
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        offsets = {
            int(p): int(o)
            for p, o in db.execute(
                "SELECT partition, next_offset FROM offsets WHERE topic = ?", (settings.topic_user_features,)
            )
        }
        rows = Counter(
            (user, item, float(ts))
            for user, item, ts in db.execute("SELECT user_id, item_id, timestamp FROM events")
        )
    finally:
        db.close()
    return offsets, rows


def kafka_says(call: Any) -> Any:
    """``call()``, or None while Kafka cannot answer (a broker starting or just killed)."""
    try:
        return call()
    except KafkaException:
        return None


def accepted_rows(events: pd.DataFrame) -> Counter[tuple[str, str, float]]:
    """What the trainer's log must hold of ``events``: each once, as (user, item, timestamp)."""
    rows: Counter[tuple[str, str, float]] = Counter()
    for raw in dataset_events(events, "rows"):
        event = parse_event(orjson.dumps(raw))
        assert isinstance(event, Interaction)
        rows[(event.user_id, event.item_id, event.timestamp)] += 1
    return rows


def assert_nothing_lost(
    ks: KafkaStack,
    expected: dict[str, tuple[int, list[str]]],
    logged: Counter[tuple[str, str, float]],
    timeout: float = SETTLE_TIMEOUT,
) -> None:
    """Every accepted event is in its user's features, in the user's next list, and in the trainer's
    log exactly once (``expected``: each user's features; ``logged``: the trainer's log's rows of
    those users)."""
    settings = ks.settings
    reader = FeatureReader(settings)
    try:

        def features_complete() -> bool:
            latest = reader.read(1.0)
            return all(latest.get(user, (0,))[0] >= count for user, (count, _) in expected.items())

        try:
            wait_for(features_complete, timeout, f"the features of all {len(expected)} users")
        except pytest.fail.Exception:
            behind = {
                user: (reader.latest.get(user, (0,))[0], count)
                for user, (count, _) in expected.items()
                if reader.latest.get(user, (0,))[0] < count
            }
            pytest.fail(
                f"{len(behind)} users' features behind (got, expected): {dict(list(behind.items())[:10])}\n"
                f"{ks.log_tails()}"
            )
        reader.read(2.0)  # anything still in flight (a double count would show up here)
        wrong = {
            user: (reader.latest[user][0], count)
            for user, (count, history) in expected.items()
            if reader.latest[user] != (count, history)
        }
        assert not wrong, (
            f"{len(wrong)} users' features differ from an exactly-once run (got, expected): {wrong}"
        )
        updated_at = dict(reader.updated_at)
    finally:
        reader.close()

    # The next list: the scorers committed every features message (they commit only what is in
    # Redis), and each list was written after the user's last features.
    topic = settings.topic_user_features
    ends = high_watermarks(settings, topic)

    def scored() -> bool:
        committed = kafka_says(lambda: committed_offsets(settings, SCORER_GROUP, topic))
        return committed is not None and all(committed[p] >= end for p, end in ends.items())

    wait_for(scored, timeout, f"the scorers to commit the features to their end {ends}")
    stale = {}
    names = list(expected)
    raw = [
        value
        for k in range(0, len(names), 1000)
        for value in ks.live.redis.mget([ks.live.keys.recs(user) for user in names[k : k + 1000]])
    ]
    for user, value in zip(names, raw, strict=True):
        _count, history = expected[user]
        cached = None if value is None else CachedList.decode(value)
        if (
            cached is None
            or cached.generated_at < updated_at[user]
            or set(history) & {i for i, _ in cached.items}
        ):
            stale[user] = None if cached is None else (cached.generated_at, updated_at[user])
    assert not stale, (
        f"{len(stale)} users' lists do not follow their last features: {dict(list(stale.items())[:10])}"
    )

    # The trainer's log: read to the end, every event exactly once.
    def logged_to_end() -> bool:
        offsets, _rows = trainer_log(settings)
        return all(offsets.get(p, 0) >= end for p, end in ends.items())

    wait_for(logged_to_end, timeout, f"the trainer to log the features to their end {ends}")
    _offsets, rows = trainer_log(settings)
    users = set(expected)
    mine = Counter({row: n for row, n in rows.items() if row[0] in users})
    twice = {row: n for row, n in mine.items() if n > 1}
    missing = logged - mine
    extra = mine - logged
    assert not twice, f"{len(twice)} events in the trainer's log more than once: {list(twice.items())[:10]}"
    assert not missing, f"{sum(missing.values())} events missing from the trainer's log: {list(missing)[:10]}"
    assert not extra, f"{sum(extra.values())} unexpected events in the trainer's log: {list(extra)[:10]}"


# --- Kafka's own view ------------------------------------------------------------------------------


def changelog(table: str) -> str:
    """The changelog topic of one of ingest's Faust tables."""
    return f"{INGEST_GROUP}-{table}-changelog"


def alter_topic(kafka: ApacheKafka, topic: str, configs: Mapping[str, str]) -> None:
    """Set ``configs`` on ``topic`` (incremental: the topic's other settings stay)."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in configs.items()
        ],
    )
    for future in kafka.admin().incremental_alter_configs([resource]).values():
        future.result(30)


def offsets_held(settings: Settings, topic: str, partition: int) -> tuple[list[int], int, int]:
    """The offsets of every record ``topic[partition]`` holds, its low and its high watermark."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        offsets: list[int] = []
        if high > low:
            consumer.assign([TopicPartition(topic, partition, low)])

            def read_to_end() -> bool:
                offsets.extend(m.offset() for m in consumer.consume(10_000, 0.5) if m.error() is None)
                return bool(offsets) and offsets[-1] >= high - 1  # compaction never removes the last record

            wait_for(read_to_end, 60, f"{topic}[{partition}] read to its end {high}", interval=0)
        return offsets, low, high
    finally:
        consumer.close()


def empty_partition(kafka: ApacheKafka, settings: Settings, topic: str, partition: int) -> int:
    """Delete every record of ``topic[partition]`` as retention would (DeleteRecords); returns its
    end offset, where it starts now."""
    for future in kafka.admin().delete_records([TopicPartition(topic, partition, OFFSET_END)]).values():
        future.result(30)
    offsets, low, high = offsets_held(settings, topic, partition)
    assert offsets == [] and low == high, f"{topic}[{partition}] still holds {offsets} ({low}..{high})"
    return high


def log_lines(child: ChildProcess, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of a service whose ``msg`` is ``message``."""
    lines = child.log_path.read_text(errors="replace").splitlines()
    return [
        entry for line in lines if line.startswith("{") and (entry := orjson.loads(line))["msg"] == message
    ]


# --- publishing through faults -----------------------------------------------------------------


class ChunkedPublisher(threading.Thread):
    """Publishes events in paced chunks; a chunk Kafka did not fully acknowledge is published again
    (the same event ids: ingest drops the repeats), until every event is acknowledged."""

    def __init__(self, settings: Settings, events: list[dict[str, Any]], chunks: int, pause: float) -> None:
        super().__init__(name="chunked-publisher", daemon=True)
        self.publisher = Publisher(settings=settings)  # checks the topic now, while the broker runs
        self.events, self.chunks, self.pause = events, chunks, pause
        self.acknowledged = 0
        self.republished = 0  # chunks sent again
        self.error: BaseException | None = None
        self.done_at = 0.0

    def run(self) -> None:
        total = len(self.events)
        try:
            for k in range(self.chunks):
                chunk = self.events[k * total // self.chunks : (k + 1) * total // self.chunks]
                while True:
                    for event in chunk:
                        self.publisher.publish_event(event)
                    try:
                        self.publisher.flush(timeout=60)
                        break
                    except PublishError:
                        self.republished += 1
                self.acknowledged += len(chunk)
                time.sleep(self.pause)
            self.done_at = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc


# --- 1. a broker restart --------------------------------------------------------------------------------


def test_broker_kill9_and_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    with kafka_stack(tmp_path) as ks:
        events = prefixed(generate(users=150, items=120, clusters=5, events_per_user=(40, 80), seed=17), "b-")
        expected = expected_features(events, "restart", ks.settings)
        ordered = list(dataset_events(events, "restart"))
        pids = ks.pids()
        reader = FeatureReader(ks.settings)
        publisher = ChunkedPublisher(ks.settings, ordered, chunks=60, pause=0.3)  # about 20 s
        publisher.start()
        try:
            wait_for(
                lambda: reader.read(0.3) and reader.events >= len(ordered) // 4,
                120,
                "a quarter of the stream",
            )
            reader.close()  # no client of the test's own retries the broker while it is away
            at_kill = publisher.acknowledged
            killed_at = time.monotonic()
            ks.kafka.kill(0)
            ks.kafka.restart(0)
            back_at = time.monotonic()
            wait_for(lambda: not publisher.is_alive(), 180, "the publisher to get every event acknowledged")
        finally:
            publisher.join(10)
        assert publisher.error is None, repr(publisher.error)
        assert at_kill < len(ordered) and publisher.done_at > back_at, (
            "the stream did not go on past the restart"
        )
        assert_nothing_lost(ks, expected, accepted_rows(events))
        assert ks.pids() == pids, "a service had to be restarted"
        print(
            f"broker killed at {at_kill}/{len(ordered)} acknowledged events, back after "
            f"{back_at - killed_at:.1f} s; {publisher.republished} chunks published again"
        )


# --- 2. compaction -----------------------------------------------------------------------------------

COMPACTED_TABLES = ("user_state", "item_popularity")
COMPACT_FAST = {  # the changelogs' own settings: small segments, cleaned as soon as possible
    "segment.ms": "200",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
}


def test_ingest_restores_its_tables_from_compacted_changelogs(tmp_path: Path) -> None:
    cleaner = {"log.cleaner.backoff.ms": 200}  # the log cleaner looks for work every 200 ms (15 s by default)
    with kafka_stack(tmp_path, server_properties=cleaner) as ks:
        settings = ks.settings
        for table in COMPACTED_TABLES:
            alter_topic(ks.kafka, changelog(table), COMPACT_FAST)
        # Many versions of every user's state: a paced stream, written back every half second.
        events = prefixed(generate(users=100, items=120, clusters=5, events_per_user=(30, 60), seed=19), "c-")
        ordered = list(dataset_events(events, "compact"))
        publisher = ChunkedPublisher(settings, ordered, chunks=30, pause=0.3)
        publisher.start()
        wait_for(lambda: not publisher.is_alive(), 120, "the stream to be acknowledged")
        assert publisher.error is None, repr(publisher.error)
        users = sorted(events.user_id.unique())
        assert_nothing_lost(ks, expected_features(events, "compact", settings), accepted_rows(events))

        topic = changelog("user_state")
        held: dict[int, tuple[list[int], int, int]] = {}

        def compacted() -> bool:
            held.update({p: offsets_held(settings, topic, p) for p in range(settings.partitions)})
            return all(len(offsets) < high - low for offsets, low, high in held.values())

        wait_for(compacted, 90, f"the log cleaner to compact every partition of {topic}", interval=1)
        gaps = {p: (high - low - len(offsets), high) for p, (offsets, low, high) in held.items()}

        ingest = ks.child("ingest")
        assert ingest.stop(timeout=60) == 0, f"ingest did not stop cleanly:\n{ingest.log_tail()}"
        shutil.rmtree(settings.data_dir / "ingest")  # its tables (RocksDB) and the clean-stop marker
        restarted_at = time.monotonic()
        ks.stack.supervise()
        ks.wait_ready("ingest")
        restore_seconds = time.monotonic() - restarted_at

        # One more event per user: each is folded into the restored state.
        touch = touch_events(users, "i-after", time.time())
        ks.live.stream_in(touch, "compact-after")
        both = pd.concat([events, touch], ignore_index=True)
        expected = expected_features(events, "compact", settings)
        for user, (count, history) in expected_features(touch, "compact-after", settings).items():
            expected[user] = (expected[user][0] + count, [*expected[user][1], *history])
        assert_nothing_lost(ks, expected, accepted_rows(both))
        print(
            f"user_state changelog records removed by compaction, of each partition's end: {gaps}; "
            f"ingest restored and ready in {restore_seconds:.1f} s"
        )


# --- 3. retention -----------------------------------------------------------------------------------

EXPIRED_LOG = "events expired from Kafka before the trainer read them"


def test_retention_empties_partitions_ingest_goes_on_and_the_trainer_says_what_it_lost(
    tmp_path: Path,
) -> None:
    with kafka_stack(tmp_path) as ks:
        settings = ks.settings
        events = prefixed(generate(users=120, items=100, clusters=4, events_per_user=(5, 15), seed=23), "r-")
        users = sorted(events.user_id.unique())
        publisher = ChunkedPublisher(settings, list(dataset_events(events, "retain")), chunks=10, pause=0.3)
        publisher.start()  # in chunks: several features messages on each partition
        wait_for(lambda: not publisher.is_alive(), 120, "the stream to be acknowledged")
        assert publisher.error is None, repr(publisher.error)
        assert_nothing_lost(ks, expected_features(events, "retain", settings), accepted_rows(events))

        for name in ("ingest", "trainer"):
            assert ks.child(name).stop(timeout=60) == 0, (
                f"{name} did not stop cleanly:\n{ks.child(name).log_tail()}"
            )
        first = [user for user in users if partition_for(user, settings.partitions) == 0]
        assert first and len(first) < len(users)
        # Acknowledged while ingest is away, deleted before it reads them.
        with Publisher(settings=settings) as publisher:
            publish_stream(
                publisher,
                dataset_events(touch_events(first, "i-expired", time.time()), "expired"),
                progress=False,
            )
        alter_topic(ks.kafka, changelog("user_state"), {"cleanup.policy": "compact,delete"})
        input_end = empty_partition(ks.kafka, settings, settings.topic_interactions, 0)
        changelog_end = empty_partition(ks.kafka, settings, changelog("user_state"), 0)
        features_end = empty_partition(ks.kafka, settings, settings.topic_user_features, 0)
        shutil.rmtree(log_directory(settings))  # the trainer's log, rebuilt from Kafka

        ks.stack.supervise()
        ks.wait_ready("ingest", "trainer")
        wait_for(lambda: log_lines(ks.child("trainer"), EXPIRED_LOG), 60, "the trainer to say what it lost")
        said = [
            (entry["partition"], entry["lost_messages"])
            for entry in log_lines(ks.child("trainer"), EXPIRED_LOG)
        ]
        assert said == [(0, features_end)], said

        # One more event per user: ingest goes on from the state it had (its local tables).
        touch = touch_events(users, "i-after", time.time())
        ks.live.stream_in(touch, "retain-after")
        expected = expected_features(events, "retain", settings)
        for user, (count, history) in expected_features(touch, "retain-after", settings).items():
            expected[user] = (expected[user][0] + count, [*expected[user][1], *history])
        # The trainer's log: what partition 1 held of the stream, and the new events.
        kept = events[~events.user_id.isin(first)]
        assert_nothing_lost(ks, expected, accepted_rows(kept) + accepted_rows(touch))
        print(
            f"emptied: input[0] at {input_end} ({len(first)} events expired unread), user_state changelog[0] "
            f"at {changelog_end}, user features[0] at {features_end} (the trainer's log lost them, and said so)"
        )


# --- 4. a leader lost ----------------------------------------------------------------------------------

LEADER_RATE = 1000.0  # events/s
# More users than events: each user has one event, so the first rewrite of its list after the
# publish is that event's, however late (two events of a user in flight could not be told apart).
LEADER_USERS = 70_000
LEADER_ITEMS = 500
BEFORE_KILL_SECONDS = 15.0
# The same stream over other users first, not measured: three fresh JVM brokers compile their hot
# paths as they run, and until then the stack does not keep up (here p99 2-5 s in the first 15 s
# of a stream, p99 ≤ 500 ms from about 40 s on; bench/brokers.py measured the same).
WARM_UP_SECONDS = 40.0
AFTER_KILL_SECONDS = 50.0
FRESH_BOUND_MS = 500.0  # the p99 freshness bound on three brokers
# ... or twice the p99 before the kill (the median of its seconds'), where the machine does not keep
# that bound even without a fault (issue 25, section 3): the test is about the fault.
BEFORE_FACTOR = 2.0
# The issue's target: 30 s. A KRaft broker is fenced 9 s after its death and its partitions' new
# leaders elected; the consumers' session timeout (30 s) outlasts that, so a consumer whose group
# coordinator was on the dead node keeps its partitions (with a 10 s one, the scorer's session ran
# out, it rejoined as a new member and waited for its old self to expire: 12-38 s over seven runs).
RECOVERY_LIMIT_SECONDS = 30.0
# A recovery is measured only from a steady state: where the stack does not keep up with the stream
# even before the kill (its seconds' p99 above this; seen here at a load of 10 and more, the scorer
# falling behind), the machine is too busy to measure one, and the test warns instead (the stream
# must still go on, every event get its list, and nothing be lost).
STEADY_LIMIT_MS = 5000.0


class PacedStream(threading.Thread):
    """bench/freshness.py's pacing and its matching of each event to the next rewrite of its user's
    list (Redis keyspace notifications), on a thread of its own. The events go through a
    confluent-kafka producer as the Publisher's (``acks=all``, 50 ms linger, queued while a
    partition has no leader: the other partitions' events keep flowing; aiokafka's producer, the
    benchmark's, blocks every send while one partition's batch cannot leave). Each event has an id
    and a timestamp; ``acknowledged`` holds those Kafka acknowledged."""

    def __init__(
        self, settings: Settings, users: list[str], items: list[str], rate: float, seconds: float
    ) -> None:
        super().__init__(name="paced-stream", daemon=True)
        self.settings, self.users, self.items = settings, users, items
        self.rate, self.count = rate, round(rate * seconds)
        self.tracker = UpdateTracker()
        self.acknowledged: list[dict[str, Any]] = []
        self.failed: list[str] = []
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._stream())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _stream(self) -> None:
        settings, tracker = self.settings, self.tracker
        order = random.Random(4).sample(self.users, len(self.users))
        pick = random.Random(5)
        # The Publisher's client and configuration (a user's events on the user's partition), with
        # room for the failover in its delivery timeout.
        producer = Producer({**producer_config(settings, 50), "message.timeout.ms": 120_000, "log_level": 3})

        def delivered(event: dict[str, Any], error: Any) -> None:
            (self.failed if error is not None else self.acknowledged).append(event)

        async def send(seq: int) -> None:
            now = time.time()
            user = order[seq % len(order)]
            event = {
                "user_id": user,
                "item_id": pick.choice(self.items),
                "event_type": "click",
                "timestamp": round(now, 3),
                "event_id": f"lead-{seq}",
            }
            tracker.published(user, event["event_id"], now)
            producer.produce(
                settings.topic_interactions,
                orjson.dumps(event),
                key=user.encode(),
                on_delivery=lambda error, _message, event=event: delivered(event, error),
            )
            producer.poll(0)
            self.sent = seq + 1
            # Let the listener note the lists written meanwhile: the pacing yields only when ahead of
            # its schedule, and a loop behind it would time every list late (its own lag, not the stack's).
            await asyncio.sleep(0)

        async with ListRewrites(settings, tracker.updated):
            try:
                await paced(self.rate, self.count, send, lambda: f"{len(tracker.updated_at):,} lists updated")
                deadline = time.monotonic() + 150
                while len(producer) and time.monotonic() < deadline:  # every delivery report, loop free
                    producer.poll(0)
                    await asyncio.sleep(0.05)
                # Drain: until every event has its update, or none came for 15 s.
                last, idle_since = len(tracker.updated_at), time.monotonic()
                while tracker.pending and time.monotonic() - idle_since < 15:
                    await asyncio.sleep(0.2)
                    if len(tracker.updated_at) != last:
                        last, idle_since = len(tracker.updated_at), time.monotonic()
            finally:
                producer.flush(10)

    def frame(self) -> pd.DataFrame:
        """The acknowledged events as an interaction frame (its ``row``: the event's sequence number)."""
        frame = pd.DataFrame(self.acknowledged)
        return pd.DataFrame(
            {
                "user_id": frame.user_id,
                "item_id": frame.item_id,
                "timestamp": frame.timestamp,
                "value": float("nan"),
                "event_type": frame.event_type,
                "row": frame.event_id.str.removeprefix("lead-").astype(int),
            }
        )


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def freshness_by_second(tracker: UpdateTracker, since: float) -> dict[int, list[float]]:
    """Latencies (ms) of the matched events by the second (from ``since``) they were published in;
    an event never updated counts as infinitely late."""
    seconds: dict[int, list[float]] = {}
    for event, published in tracker.published_at.items():
        updated = tracker.updated_at.get(event)
        latency = math.inf if updated is None else (updated - published) * 1000
        seconds.setdefault(math.floor(published - since), []).append(latency)
    return seconds


def partition_leaders(kafka: ApacheKafka, topic: str, partitions: int) -> dict[int, int | None]:
    return {p: kafka_says(lambda p=p: kafka.leader_of(topic, p)) for p in range(partitions)}


@pytest.mark.measures_latency
def test_a_leader_lost_at_1000_events_per_second_the_stream_goes_on(tmp_path: Path) -> None:
    with kafka_stack(tmp_path, nodes=3) as ks:  # two partitions: the victim leads one, half the input
        settings = ks.settings
        topics = [settings.topic_interactions, settings.topic_user_features, changelog("user_state")]
        assert settings.replication_factor == 3
        for topic in topics:
            for p in range(settings.partitions):
                wait_for(
                    lambda t=topic, p=p: len(kafka_says(lambda: ks.kafka.in_sync_replicas(t, p)) or []) == 3,
                    60,
                    f"{topic}[{p}] with 3 in-sync replicas",
                )
        items = [f"i{k}" for k in range(LEADER_ITEMS)]
        warm_up = PacedStream(
            settings, [f"w-{k}" for k in range(LEADER_USERS)], items, LEADER_RATE, WARM_UP_SECONDS
        )
        warm_up.start()
        warm_up.join(WARM_UP_SECONDS + 180)
        assert not warm_up.is_alive() and warm_up.error is None, f"the warm-up stream: {warm_up.error!r}"
        users = [f"l-{k}" for k in range(LEADER_USERS)]
        stream = PacedStream(settings, users, items, LEADER_RATE, BEFORE_KILL_SECONDS + AFTER_KILL_SECONDS)
        assert stream.count <= len(users)
        pids = ks.pids()
        started = time.time()
        stream.start()
        wait_for(
            lambda: stream.sent >= LEADER_RATE * BEFORE_KILL_SECONDS or not stream.is_alive(),
            60,
            "the stream before the kill",
        )
        leaders = partition_leaders(ks.kafka, settings.topic_interactions, settings.partitions)
        victim = Counter(leaders.values()).most_common(1)[0][0]
        assert victim is not None, leaders
        killed_at = time.time()
        ks.kafka.kill(victim)
        wait_for(
            lambda: not stream.is_alive(), BEFORE_KILL_SECONDS + AFTER_KILL_SECONDS + 120, "the stream to end"
        )
        assert stream.error is None, repr(stream.error)
        moved = partition_leaders(ks.kafka, settings.topic_interactions, settings.partitions)
        assert victim not in moved.values() and None not in moved.values(), moved

        by_second = freshness_by_second(stream.tracker, killed_at)
        # Steady state: after the first seconds, before any event that could still be in flight at the kill.
        before = [ms for second, values in by_second.items() if -12 <= second < -2 for ms in values]
        steady = statistics.median(p99(values) for second, values in by_second.items() if -12 <= second < -2)
        bound = max(FRESH_BOUND_MS, BEFORE_FACTOR * steady)
        late = [s for s, values in sorted(by_second.items()) if s >= 0 and p99(values) > bound]
        recovered_after = (late[-1] + 1) if late else 0
        worst = max((ms for values in by_second.values() for ms in values), default=0.0)
        per_second = {
            s: (len(v), p99(v) if math.isinf(p99(v)) else round(p99(v))) for s, v in sorted(by_second.items())
        }
        summary = (
            f"killed node {victim} (leader of {sorted(p for p, n in leaders.items() if n == victim)} of "
            f"{settings.topic_interactions}) {killed_at - started:.1f} s into the stream; before: p50 "
            f"{statistics.median(before):.0f} ms, p99 {p99(before):.0f} ms; every second's p99 within "
            f"{bound:.0f} ms again {recovered_after} s after the kill (worst event {worst:.0f} ms); "
            f"{len(stream.acknowledged)} events acknowledged, {len(stream.failed)} failed, "
            f"{stream.tracker.overlapped} overlapped\nper second from the kill (events, p99 ms): {per_second}"
        )
        print(summary)
        stalled = {s: values for s, values in by_second.items() if math.inf in values}
        assert not stalled, f"events never followed by a list: {sorted(stalled)}\n{summary}"
        if steady <= STEADY_LIMIT_MS:
            assert recovered_after <= RECOVERY_LIMIT_SECONDS, summary
            assert recovered_after < AFTER_KILL_SECONDS - 5, (
                f"the run ended before it was fresh long\n{summary}"
            )
        else:
            warnings.warn(
                f"no recovery time measured: the stack did not keep up before the kill (p99 {steady:.0f} ms)",
                stacklevel=1,
            )
        assert ks.pids() == pids, "a service had to be restarted"

        restarted_at = time.monotonic()
        ks.kafka.restart(victim)
        for topic in topics:
            for p in range(settings.partitions):
                wait_for(
                    lambda t=topic, p=p: (
                        victim in (kafka_says(lambda: ks.kafka.in_sync_replicas(t, p)) or [])
                    ),
                    120,
                    f"node {victim} back in the ISR of {topic}[{p}]",
                )
        rejoined = time.monotonic() - restarted_at
        events = stream.frame()
        assert_nothing_lost(ks, expected_features(events, "lead", settings), accepted_rows(events))
        print(f"node {victim} back in every ISR {rejoined:.1f} s after its restart")


# --- 5. workers lost ---------------------------------------------------------------------------------


def test_an_ingest_worker_and_a_scorer_lost_the_others_take_over(tmp_path: Path) -> None:
    with kafka_stack(tmp_path, nodes=3, partitions=4, replicas={"ingest": 2, "scorer": 2}) as ks:
        settings = ks.settings
        events = prefixed(generate(users=200, items=150, clusters=5, events_per_user=(20, 50), seed=29), "w-")
        publisher = ChunkedPublisher(settings, list(dataset_events(events, "workers")), chunks=60, pause=0.3)
        reader = FeatureReader(settings)
        publisher.start()
        try:
            # Both instances of each kind have partitions (they did work) before the kill.
            wait_for(
                lambda: (
                    reader.read(0.3) is not None
                    and reader.events >= len(events) // 3
                    and metric_total(ks.port("ingest-1"), "streamrec_ingest_events_total") > 0
                    and metric_total(ks.port("scorer-1"), "streamrec_scorer_lists_total") > 0
                ),
                120,
                "a third of the stream, with work done by ingest-1 and scorer-1",
            )
            at_kill = publisher.acknowledged
            ks.kill9("ingest-1")
            ks.kill9("scorer-1")
            wait_for(lambda: not publisher.is_alive(), 180, "the stream to be acknowledged")
        finally:
            reader.close()
            publisher.join(10)
        assert publisher.error is None, repr(publisher.error)
        assert at_kill < len(events), "the stream was over before the kill"
        assert_nothing_lost(ks, expected_features(events, "workers", settings), accepted_rows(events))
        # Not restarted: the survivors did the rest, on every partition.
        assert not ks.child("ingest-1").alive() and not ks.child("scorer-1").alive()
        assert ks.child("ingest-2").alive() and ks.child("scorer-2").alive()
        print(f"ingest-1 and scorer-1 killed at {at_kill}/{len(events)} acknowledged events")
