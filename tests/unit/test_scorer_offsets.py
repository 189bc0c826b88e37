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
from confluent_kafka import TopicPartition

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
