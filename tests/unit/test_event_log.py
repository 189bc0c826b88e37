"""EventLog against a real embedded broker (Tansu): consume, restart without re-reading, window."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.embedded import start_broker
from streamrec.shared.events import Interaction
from streamrec.shared.messages import FeatureBatch, UserSnapshot
from streamrec.shared.settings import ConfigError, Settings, load_settings
from streamrec.trainer.event_log import EventLog
from streamrec.trainer.event_store import EventLogLocked


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded broker for the module."""
    child, address = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield address
    finally:
        child.stop()


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Settings:
    """Settings with a fresh topic (so tests do not see each other's messages) and data dir."""
    topic = f"user-features-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    return load_settings(
        kafka_bootstrap=bootstrap, topic_user_features=topic, data_dir=tmp_path, train_window_events=1000
    )


def produce(settings: Settings, start: int, count: int, linger_ms: int = 5) -> None:
    """Send ``count`` one-event FeatureBatch messages for events ``start..start+count-1`` (keyed by user)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": linger_ms})
    for n in range(start, start + count):
        user = f"u{n % 7}"
        event = Interaction(user, f"i{n}", "view", 1_700_000_000.0 + n, value=float(n) if n % 2 else None)
        message = FeatureBatch([UserSnapshot(user, [f"i{n}"], n)], [event], 0.0)
        producer.produce(settings.topic_user_features, key=user, value=message.to_json())
    assert producer.flush(30) == 0


def consume_all(log: EventLog, expected: int, timeout: float = 15.0) -> None:
    """Poll until the log holds ``expected`` events."""
    import time

    deadline = time.monotonic() + timeout
    while log.count() < expected and time.monotonic() < deadline:
        log.poll(max_messages=500, timeout=0.5)
    assert log.count() == expected


def item_numbers(log: EventLog) -> list[int]:
    return sorted(int(item[1:]) for item in log.window()["item_id"])


def test_poll_restart_resumes_without_rereading(settings: Settings) -> None:
    produce(settings, 0, 120)
    with EventLog(settings) as log:
        consume_all(log, 120)
        assert sum(log.offsets().values()) == 120
        assert log.last_seq() == 120

    with EventLog(settings) as log:  # nothing new: nothing read again
        assert log.catch_up(timeout=15) == 0
        assert log.poll(timeout=1.0) == 0
        assert log.count() == 120

    produce(settings, 120, 30)
    with EventLog(settings) as log:  # same directory: resumes from the stored offsets
        assert log.count() == 120
        assert log.catch_up(timeout=15) == 30
        assert log.count() == 150
        assert item_numbers(log) == list(range(150))  # every event exactly once
        assert log.poll(timeout=0.5) == 0


def test_window_is_recent_events_in_arrival_order_with_types(settings: Settings) -> None:
    produce(settings, 0, 50)
    with EventLog(settings) as log:
        log.catch_up(timeout=15)
        produce(settings, 50, 10)
        log.catch_up(timeout=15)
        everything, recent = log.window(), log.window(10)
    assert list(recent.columns) == ["user_id", "item_id", "event_type", "timestamp", "value"]
    assert recent["timestamp"].dtype == "float64" and recent["value"].dtype == "float64"
    assert everything["value"].isna().any() and everything["value"].notna().any()
    # The newest arrivals are the last rows, and window(n) is the tail of the full window.
    assert sorted(recent["item_id"]) == sorted(f"i{n}" for n in range(50, 60))
    assert recent.equals(everything.tail(10).reset_index(drop=True))
    # Within a user (one partition) arrival order is time order.
    for _, rows in everything.groupby("user_id"):
        assert rows["timestamp"].is_monotonic_increasing


def test_keeps_only_the_training_window(settings: Settings) -> None:
    small = settings.model_copy(update={"train_window_events": 100})
    produce(small, 0, 400)
    with EventLog(small) as log:
        log.catch_up(timeout=15)
        assert log.last_seq() == 400
        assert 100 <= log.count() < 110  # pruned in chunks, never below the window
        assert len(log.window()) == 100
    with EventLog(small) as log:
        assert 100 <= log.count() < 110


def produce_to(settings: Settings, partition: int, items: list[str]) -> None:
    """Send one one-event FeatureBatch message per item to one partition."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for item in items:
        event = Interaction(f"u-p{partition}", item, "view", 1_700_000_000.0)
        message = FeatureBatch([UserSnapshot(event.user_id, [item], 1)], [event], 0.0)
        producer.produce(settings.topic_user_features, value=message.to_json(), partition=partition)
    assert producer.flush(30) == 0


def test_partition_without_stored_offset_is_read_from_the_beginning(settings: Settings) -> None:
    # Tansu does not implement CreatePartitions, so a partition the log has never read stands in
    # for one added to the topic: both are assigned from the beginning by the same code.
    produce_to(settings, 0, ["a0", "a1"])
    produce_to(settings, 1, ["b0"])
    with EventLog(settings) as log:
        log.catch_up(timeout=15)
        assert log.offsets() == {0: 2, 1: 1}
    produce_to(settings, 2, ["c0", "c1", "c2"])
    produce_to(settings, 0, ["a2"])
    with EventLog(settings) as log:
        assert log.catch_up(timeout=15) == 4
        assert log.offsets() == {0: 3, 1: 1, 2: 3}
        assert sorted(log.window()["item_id"]) == ["a0", "a1", "a2", "b0", "c0", "c1", "c2"]


def test_unreadable_messages_are_skipped_but_passed(settings: Settings) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topic_user_features, value=b"not json", partition=0)
    assert producer.flush(30) == 0
    produce(settings, 0, 5)
    with EventLog(settings) as log:
        log.catch_up(timeout=15)
        assert log.count() == 5
        assert sum(log.offsets().values()) == 6


def test_one_writer_per_directory(settings: Settings) -> None:
    with EventLog(settings), pytest.raises(EventLogLocked):
        EventLog(settings)


def test_needs_kafka(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_BOOTSTRAP"):
        EventLog(load_settings(kafka_bootstrap=None, data_dir=tmp_path))


def test_catch_up_reads_to_the_true_end_of_batched_partitions(settings: Settings) -> None:
    # One producer batch per partition: Tansu then lists the partition end as 1, but the catch-up
    # must still read every message (a training cycle right after it must see all events).
    produce(settings, 0, 20_000, linger_ms=200)
    with EventLog(settings, keep_events=20_000) as log:
        assert log.catch_up(timeout=30) == 20_000
        assert item_numbers(log) == list(range(20_000))


def test_a_forgotten_user_loses_every_logged_event_but_keeps_later_ones(settings: Settings) -> None:
    user = "forget-me-7f3a9c"
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})

    def send(batch: FeatureBatch, partition: int) -> None:
        producer.produce(settings.topic_user_features, value=batch.to_json(), partition=partition)

    for n, partition in enumerate([0, 1, 0]):  # events of one user on two partitions (two partitioners)
        event = Interaction(user, f"old{n}", "view", 1_700_000_000.0 + n)
        send(FeatureBatch([UserSnapshot(user, [event.item_id], n + 1)], [event], 0.0), partition)
    other = Interaction("someone-else", "kept", "view", 1_700_000_000.0)
    send(FeatureBatch([UserSnapshot(other.user_id, ["kept"], 1)], [other], 0.0), 0)
    for partition in (0, 1):  # ingest erases on each partition where the user was
        send(FeatureBatch([], [], 0.0, forgotten=[user]), partition)
    assert producer.flush(30) == 0
    with EventLog(settings) as log:
        log.catch_up(timeout=15)
        assert list(log.window()["item_id"]) == ["kept"]
        assert log.count() == 1
        assert sum(log.offsets().values()) == 6
    # Deleted rows are zeroed and the WAL truncated: the old events are not in the files either.
    for path in (settings.data_dir / "trainer").glob("events.sqlite*"):
        data = path.read_bytes()
        assert user.encode() not in data and b"old0" not in data and b"old1" not in data, path.name

    # The user's next event (after the erasure on its partition) is a new history: kept.
    again = Interaction(user, "new", "view", 1_700_000_100.0)
    send(FeatureBatch([], [], 0.0, forgotten=[user]), 0)  # an erasure before it in the same poll
    send(FeatureBatch([UserSnapshot(user, ["new"], 1)], [again], 0.0), 0)
    assert producer.flush(30) == 0
    with EventLog(settings) as log:
        log.catch_up(timeout=15)
        window = log.window()
        assert sorted(zip(window["user_id"], window["item_id"], strict=True)) == [
            (user, "new"),
            ("someone-else", "kept"),
        ]
        assert log.count() == 2
