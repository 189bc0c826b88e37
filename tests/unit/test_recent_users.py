"""The scorer's memory of recent users, which it re-scores when a new model arrives."""

from __future__ import annotations

from collections import OrderedDict

from streamrec.scorer.recent_users import PartitionTail, RecentUsers

from support import FeatureMessage


def test_recent_users_keep_the_latest_history_and_evict_the_least_recently_seen() -> None:
    recent = RecentUsers(capacity=2)
    recent.remember("a", ["i1", 'é/ü "x"'], partition=0)  # any id survives the compact encoding
    recent.remember("b", ["i2"], partition=1)
    recent.remember("a", ["i1", 'é/ü "x"', "i3"], partition=0)  # refreshed: now the most recent
    recent.remember("c", ["i4"], partition=1)  # over capacity: b, the least recently seen, goes

    assert recent.most_recent_first() == ["c", "a"]
    assert recent.get("b") is None
    remembered = recent.get("a")
    assert remembered is not None
    assert (remembered.history, remembered.partition) == (["i1", 'é/ü "x"', "i3"], 0)

    recent.forget("a")
    assert recent.get("a") is None and len(recent) == 1

    recent.remember("d", [], partition=2)
    assert recent.get("d").history == []  # type: ignore[union-attr]


def test_a_capacity_of_zero_remembers_nobody() -> None:
    recent = RecentUsers(capacity=0)
    recent.remember("a", ["i1"], partition=0)
    assert len(recent) == 0 and recent.get("a") is None


def test_users_read_back_from_kafka_are_older_than_any_seen_and_never_override_them() -> None:
    recent = RecentUsers(capacity=3)
    recent.remember("seen", ["new"], partition=0)
    assert recent.remember_older("seen", ["old"], partition=0) is False  # what was seen is newer
    assert recent.remember_older("r1", ["a"], partition=1) is True  # most recent of those read back
    assert recent.remember_older("r2", ["b"], partition=1) is True
    assert recent.remember_older("r3", ["c"], partition=1) is False  # full: the oldest has no room

    assert recent.most_recent_first() == ["seen", "r1", "r2"]
    assert recent.get("seen").history == ["new"]  # type: ignore[union-attr]
    recent.remember("x", ["d"], partition=0)  # a new user evicts the oldest read back first
    assert recent.most_recent_first() == ["x", "seen", "r1"]

    recent.forget_partition(0)  # another scorer had it: what is remembered of it is stale
    assert recent.most_recent_first() == ["r1"]


def test_a_partition_tail_keeps_each_users_latest_history_in_order_and_leaves_erased_users_out() -> None:
    histories: OrderedDict[str, list[str]] = OrderedDict()
    batch = [
        FeatureMessage(10, {"a": ["1"], "b": ["2"]}),
        FeatureMessage(11, {"a": ["1", "3"]}),  # a again: now the most recent
        FeatureMessage(12, {"c": ["4"]}, forgotten=["b"]),  # b erased: never re-scored
        FeatureMessage(13, {"d": ["5"]}),  # at the committed offset: the group has not scored it
    ]
    assert PartitionTail._fold(batch[:2], end=13, histories=histories, users=10) is False  # more to read
    assert PartitionTail._fold(batch[2:], end=13, histories=histories, users=10) is True
    assert list(histories.items()) == [("a", ["1", "3"]), ("c", ["4"])]

    kept: OrderedDict[str, list[str]] = OrderedDict()
    PartitionTail._fold(batch, end=13, histories=kept, users=1)  # room for one: the most recent
    assert list(kept.items()) == [("c", ["4"])]
