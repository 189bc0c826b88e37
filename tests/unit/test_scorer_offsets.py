"""The scorer's offsets, no server: an offset is owed (and then committed) only once the lists of its
batch are written, across revokes and stops (``PartitionOffsets``, and the loop around it), and a
partition gained has its users recalled unless this scorer scored it last.

The same against real brokers: tests/integration/test_faults.py (kill -9 of the scorer) and
test_scale_out.py (a model swap after a scorer left).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamrec.scorer.offsets import PartitionOffsets
from streamrec.scorer.redis_writer import Stopped
from streamrec.scorer.scoring import ScoredLists
from streamrec.scorer.service import ScorerService
from streamrec.shared.settings import Settings

from support import FeatureMessage

TOPIC = "streamrec.user-features"


class Commits:
    """Stands in for the scorer's group consumer: records the commits asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, int]], bool]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.calls.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))

    def get_watermark_offsets(self, partition: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return (0, 100)  # for the lag gauge

    def close(self) -> None:
        pass


class GroupConsumer(Commits):
    """Stands in for the scorer's group consumer in the loop: hands out ``messages``, one per poll."""

    def __init__(self, messages: list[FeatureMessage]) -> None:
        super().__init__()
        self.messages = messages

    def poll(self, timeout: float) -> FeatureMessage | None:
        return self.messages.pop(0) if self.messages else None

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return []  # nothing more in this micro-batch (and nothing on the control topics)


class Tail:
    """Stands in for PartitionTail: a committed offset and the users before it, per partition."""

    def __init__(self, committed: dict[int, int], histories: dict[int, dict[str, list[str]]]) -> None:
        self._committed, self._histories = committed, histories
        self.read: list[int] = []
        self.consumer = Commits()

    def committed(self, partitions: list[int]) -> dict[int, int]:
        return {partition: self._committed.get(partition, -1) for partition in partitions}

    def latest_histories(self, partition: int, end: int, messages: int, users: int) -> OrderedDict:
        self.read.append(partition)
        return OrderedDict(self._histories.get(partition, {}))


@pytest.fixture
def scorer(tmp_path: Path) -> Iterator[ScorerService]:
    service = ScorerService(
        Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    )
    service.intake.consumer = service.offsets.consumer = Commits()  # type: ignore[assignment]
    service.offsets.commit_seconds = 0.0  # every periodic commit is due
    service.user_batches.score = service.rescoring.score = lambda histories: ScoredLists(
        {u: b"list" for u in histories}, len(histories), 0
    )
    yield service
    service.close()


def test_an_offset_is_owed_only_once_its_lists_are_written(
    scorer: ScorerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def redis_down(scored: ScoredLists, trigger: str) -> None:
        raise redis.ConnectionError("Redis is away")

    monkeypatch.setattr(scorer.user_lists, "write", redis_down)
    with pytest.raises(redis.ConnectionError):
        scorer.user_batches.process([FeatureMessage(41, partition=0, users={"a": ["i1"]})], None)  # type: ignore[list-item]
    assert scorer.offsets.owed == {}
    scorer.offsets.commit_if_due()
    assert scorer.offsets.consumer.calls == []  # type: ignore[union-attr]

    written: list[str] = []
    monkeypatch.setattr(scorer.user_lists, "write", lambda scored, trigger: written.extend(scored.values))
    scorer.user_batches.process(
        [
            FeatureMessage(41, partition=0, users={"a": ["i1"]}),
            FeatureMessage(7, partition=1, users={"b": ["i2"]}),
        ],  # type: ignore[list-item]
        None,
    )
    assert sorted(written) == ["a", "b"]
    assert scorer.offsets.owed == {(TOPIC, 0): 42, (TOPIC, 1): 8}  # the next offsets to read

    scorer.offsets.commit_if_due()  # the periodic commit does not wait for the broker
    scorer.user_batches.process([FeatureMessage(8, partition=1, users={"b": ["i2", "i3"]})], None)  # type: ignore[list-item]
    scorer.offsets.revoke({1})  # a revoke waits, and commits only the revoked partition's
    assert scorer.offsets.consumer.calls == [([(0, 42), (1, 8)], True), ([(1, 9)], False)]  # type: ignore[union-attr]
    assert scorer.offsets.owed == {}


def test_a_partition_gained_has_its_users_recalled_unless_this_scorer_scored_it_last(
    scorer: ScorerService,
) -> None:
    scorer.user_lists.write = lambda scored, trigger: None  # type: ignore[method-assign]
    scorer.user_batches.process(
        [
            FeatureMessage(9, partition=0, users={"mine": ["i1"]}),
            FeatureMessage(4, partition=1, users={"stale": ["i0"]}),
        ],  # type: ignore[list-item]
        None,
    )
    scorer.offsets.assigned = {0, 1}
    scorer.offsets.commit_all()
    # Another scorer had partition 1 meanwhile and scored up to offset 20.
    scorer.rescoring.tail = Tail(
        {0: 10, 1: 20}, {0: {"mine": ["old"]}, 1: {"stale": ["i0", "i5"], "x": ["i6"]}}
    )  # type: ignore[assignment]
    scorer.model = object()  # type: ignore[assignment]  # a served model: recalled users are queued

    scorer._on_revoke(None, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    scorer._on_assign(None, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]

    assert scorer.rescoring.tail.read == [1]  # type: ignore[attr-defined]  # partition 0: this scorer's memory is current
    assert scorer.rescoring.recent.get("mine").history == ["i1"]  # type: ignore[union-attr]
    assert scorer.rescoring.recent.get("stale").history == ["i0", "i5"]  # type: ignore[union-attr]  # what the other saw
    # Most recently seen first, each re-scored only if Redis holds a list from an older model.
    assert list(scorer.rescoring.queue.items()) == [("x", True), ("stale", True)]


def test_an_offset_is_never_committed_before_its_lists_are_written_across_revokes_and_stops(
    scorer: ScorerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What happened, in order: the lists written, the offsets committed.
    events: list[tuple[object, ...]] = []

    def write(scored: ScoredLists, trigger: str) -> None:
        if "refused" in scored.values:
            raise redis.ConnectionError("Redis is away")
        if "stopped" in scored.values:
            raise Stopped("write 1 recommendation lists")
        events.append(("write", sorted(scored.values)))

    def commit(offsets: list[TopicPartition], asynchronous: bool) -> None:
        events.append(("commit", [(tp.partition, tp.offset) for tp in offsets], asynchronous))

    monkeypatch.setattr(scorer.user_lists, "write", write)
    monkeypatch.setattr(scorer.offsets.consumer, "commit", commit)
    scorer.offsets.commit_seconds = 60.0  # commits only on revoke and stop
    batch = scorer.user_batches.process
    partitions = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]

    batch([FeatureMessage(10, partition=0, users={"a": ["i1"]})], None)  # type: ignore[list-item]
    with pytest.raises(redis.ConnectionError):
        batch([FeatureMessage(5, partition=1, users={"refused": ["i1"]})], None)  # type: ignore[list-item]
    scorer._on_revoke(None, partitions)  # type: ignore[arg-type]  # partition 1's batch is not in Redis
    scorer._on_assign(None, partitions)  # type: ignore[arg-type]
    batch([FeatureMessage(5, partition=1, users={"b": ["i2"]})], None)  # type: ignore[list-item]  # re-delivered
    with pytest.raises(Stopped):
        batch([FeatureMessage(11, partition=0, users={"stopped": ["i3"]})], None)  # type: ignore[list-item]
    scorer.offsets.commit_all()  # the stop

    assert events == [
        ("write", ["a"]),
        ("commit", [(0, 11)], False),  # the revoke waits, and commits only what is in Redis
        ("write", ["b"]),
        ("commit", [(1, 6)], False),  # the stop waits; partition 0's last batch was never written
    ]
    assert scorer.offsets.owed == {}


@pytest.mark.parametrize("stopped_by", ["request", "Redis unreachable"])
def test_the_loop_commits_the_written_batches_on_stop_and_waits(
    scorer: ScorerService, monkeypatch: pytest.MonkeyPatch, stopped_by: str
) -> None:
    consumer = GroupConsumer(
        [
            FeatureMessage(10, partition=0, users={"a": ["i1"]}),
            FeatureMessage(11, partition=0, users={"b": ["i2"]}),
        ]
    )
    scorer.intake.consumer = scorer.offsets.consumer = consumer  # type: ignore[assignment]
    scorer.control.consumer = GroupConsumer([])  # type: ignore[assignment]
    scorer.offsets.commit_seconds = 60.0  # no periodic commit during the test
    written: list[str] = []

    def write(scored: ScoredLists, trigger: str) -> None:
        if "b" in scored.values:
            if stopped_by == "request":
                scorer.request_stop()  # a SIGTERM during the write: the batch is finished first
            else:
                raise Stopped("write 1 recommendation lists")
        written.extend(scored.values)

    monkeypatch.setattr(scorer.user_lists, "write", write)
    scorer.run()
    if stopped_by == "request":
        assert written == ["a", "b"] and consumer.calls == [([(0, 12)], False)]
    else:  # the batch Redis never took is not committed: it is re-delivered
        assert written == ["a"] and consumer.calls == [([(0, 11)], False)]


def test_a_batch_whose_write_raised_owes_nothing() -> None:
    offsets = PartitionOffsets()

    def refused() -> None:
        raise Stopped("write 2 recommendation lists")

    with pytest.raises(Stopped):
        offsets.write_then_owe(refused, {(TOPIC, 0): 5})
    assert offsets.owed == {} and offsets.scored_to == {}
    offsets.write_then_owe(lambda: None, {(TOPIC, 0): 5, (TOPIC, 2): 9})
    assert offsets.owed == {(TOPIC, 0): 5, (TOPIC, 2): 9} and offsets.scored_to == {0: 5, 2: 9}
    assert offsets.scored_last(2, 9) and not offsets.scored_last(2, 8) and not offsets.scored_last(1, -1)


def test_the_periodic_commit_waits_for_its_interval_and_not_for_the_broker() -> None:
    offsets = PartitionOffsets(commit_seconds=60.0)
    offsets.consumer = consumer = Commits()
    offsets.write_then_owe(lambda: None, {(TOPIC, 3): 7})
    offsets.commit_if_due()
    assert consumer.calls == []  # the last commit (at start) is recent
    offsets.committed_at -= 60.0
    offsets.commit_if_due()
    assert consumer.calls == [([(3, 7)], True)] and offsets.owed == {}
    offsets.committed_at -= 60.0
    offsets.commit_if_due()
    assert consumer.calls == [([(3, 7)], True)]  # nothing owed: nothing sent


def test_a_revoke_commits_its_partitions_only_and_gives_them_up() -> None:
    offsets = PartitionOffsets()
    offsets.consumer = consumer = Commits()
    assert offsets.assign({0, 1, 2}) == [0, 1, 2]
    offsets.write_then_owe(lambda: None, {(TOPIC, 0): 4, (TOPIC, 1): 8, (TOPIC, 2): 2})
    offsets.revoke({1, 2})
    assert consumer.calls == [([(1, 8), (2, 2)], False)]
    assert offsets.assigned == {0} and offsets.owed == {(TOPIC, 0): 4}
    assert offsets.assign({0, 1}) == [1]  # partition 0 was kept
    offsets.revoke({1})  # nothing owed for it: no commit
    assert consumer.calls == [([(1, 8), (2, 2)], False)]


def test_a_failed_commit_is_logged_not_raised_and_its_offsets_not_owed_again() -> None:
    offsets = PartitionOffsets()
    offsets.consumer = consumer = Commits()

    def commit(offsets: list[TopicPartition], asynchronous: bool) -> None:
        raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))

    consumer.commit = commit  # type: ignore[method-assign]
    offsets.write_then_owe(lambda: None, {(TOPIC, 0): 4})
    offsets.revoke({0})  # the partition moved on: its next owner re-delivers and re-scores
    assert offsets.owed == {}
