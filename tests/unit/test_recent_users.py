"""The scorer's memory of recent users, which it re-scores when a new model arrives."""

from __future__ import annotations

from streamrec.scorer.service import RecentUsers


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
