"""Per-user feature state and item popularity (pure logic of services/ingest/features.py)."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from streamrec.ingest.features import (
    EVENT_TYPE,
    TIMESTAMP,
    ItemPopularity,
    PopularityRanking,
    UserState,
    add_item_event,
    apply_event,
)
from streamrec.shared.events import Interaction
from streamrec.shared.settings import Settings

HOUR = 3600.0


def event(item: str, ts: float, event_id: str | None = None, kind: str = "view") -> Interaction:
    return Interaction(user_id="u", item_id=item, event_type=kind, timestamp=ts, event_id=event_id)


def settings(history_len: int = 200, dedup_window: int = 1000) -> Settings:
    return Settings(history_len=history_len, dedup_window=dedup_window)


# --- user state ---------------------------------------------------------------------------------


def test_history_keeps_the_newest_events_in_time_order() -> None:
    state = UserState()
    for n in range(10):
        assert apply_event(state, event(f"i{n}", 100.0 + n), settings(history_len=4))
    assert state.history_item_ids() == ["i6", "i7", "i8", "i9"]
    assert [e[TIMESTAMP] for e in state.history] == [106.0, 107.0, 108.0, 109.0]
    assert state.event_count == 10
    assert (state.first_seen, state.last_seen) == (100.0, 109.0)


def test_late_event_is_inserted_at_its_place() -> None:
    state = UserState()
    for item, ts in [("a", 10.0), ("c", 30.0), ("d", 40.0)]:
        apply_event(state, event(item, ts), settings())
    apply_event(state, event("b", 20.0, kind="purchase"), settings())
    assert state.history_item_ids() == ["a", "b", "c", "d"]
    assert state.history[1][EVENT_TYPE] == "purchase"
    assert (state.first_seen, state.last_seen) == (10.0, 40.0)


def test_equal_timestamps_keep_arrival_order() -> None:
    state = UserState()
    for item in "xyz":
        apply_event(state, event(item, 5.0), settings())
    assert state.history_item_ids() == ["x", "y", "z"]


def test_event_older_than_a_full_history_is_counted_but_not_remembered() -> None:
    state = UserState()
    for n in range(3):
        apply_event(state, event(f"i{n}", 100.0 + n), settings(history_len=3))
    assert apply_event(state, event("old", 1.0), settings(history_len=3))
    assert state.history_item_ids() == ["i0", "i1", "i2"]
    assert state.event_count == 4 and state.first_seen == 1.0


def test_duplicate_event_id_is_dropped_without_changing_state() -> None:
    state = UserState()
    assert apply_event(state, event("a", 1.0, "e1"), settings())
    before = state.to_dict()
    assert not apply_event(state, event("b", 2.0, "e1"), settings())
    assert state.to_dict() == before


def test_events_without_id_are_never_duplicates() -> None:
    state = UserState()
    assert apply_event(state, event("a", 1.0), settings())
    assert apply_event(state, event("a", 1.0), settings())
    assert state.event_count == 2 and state.recent_event_ids == []


def test_dedup_window_forgets_the_oldest_ids() -> None:
    state = UserState()
    for n in range(5):
        apply_event(state, event(f"i{n}", float(n), f"e{n}"), settings(dedup_window=3))
    assert state.recent_event_ids == ["e2", "e3", "e4"]
    assert apply_event(state, event("again", 9.0, "e0"), settings(dedup_window=3))  # fell out of the window
    assert not apply_event(state, event("again", 9.0, "e4"), settings(dedup_window=3))


def test_dedup_window_zero_disables_deduplication() -> None:
    state = UserState()
    assert apply_event(state, event("a", 1.0, "e1"), settings(dedup_window=0))
    assert apply_event(state, event("a", 1.0, "e1"), settings(dedup_window=0))
    assert state.event_count == 2


def test_user_state_round_trips_through_json() -> None:
    state = UserState()
    for n in range(4):
        apply_event(state, event(f"i{n}", 10.0 * n, f"e{n}", kind="click"), settings())
    restored = UserState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
    assert restored == state


# --- item popularity ----------------------------------------------------------------------------


def test_score_halves_after_one_half_life() -> None:
    pop = ItemPopularity()
    add_item_event(pop, 1000.0, 2.0, half_life_hours=1.0)
    assert pop.score_at(1000.0 + HOUR, 1.0) == pytest.approx(1.0)
    assert pop.score_at(1000.0 + 3 * HOUR, 1.0) == pytest.approx(0.25)


def test_new_event_adds_to_the_decayed_score() -> None:
    pop = ItemPopularity()
    add_item_event(pop, 0.0, 1.0, half_life_hours=2.0)
    add_item_event(pop, 2 * HOUR, 3.0, half_life_hours=2.0)
    assert (pop.score, pop.as_of, pop.count) == (pytest.approx(3.5), 2 * HOUR, 2)


def test_score_depends_on_event_times_not_arrival_order() -> None:
    rng = random.Random(7)
    events = [(rng.uniform(0, 100 * HOUR), rng.choice([1.0, 2.0, 3.0])) for _ in range(50)]
    expected_at = max(t for t, _ in events)
    expected = sum(w * 0.5 ** ((expected_at - t) / (24 * HOUR)) for t, w in events)
    for _ in range(3):
        rng.shuffle(events)
        pop = ItemPopularity()
        for t, w in events:
            add_item_event(pop, t, w, half_life_hours=24.0)
        assert pop.as_of == expected_at and pop.count == 50
        assert pop.score == pytest.approx(expected, rel=1e-12)


def test_rank_key_orders_items_like_their_scores_at_any_time() -> None:
    older, newer = ItemPopularity(), ItemPopularity()
    add_item_event(older, 0.0, 3.0, half_life_hours=1.0)  # 3 at t=0 is worth 1.5 at t=1h
    add_item_event(newer, HOUR, 1.0, half_life_hours=1.0)
    assert older.rank_key(1.0) > newer.rank_key(1.0)
    assert older.score_at(5 * HOUR, 1.0) > newer.score_at(5 * HOUR, 1.0)
    assert ItemPopularity().rank_key(1.0) == -math.inf


def test_item_popularity_round_trips_through_json() -> None:
    pop = ItemPopularity()
    add_item_event(pop, 123.5, 2.0, half_life_hours=3.0)
    assert ItemPopularity.from_dict(orjson.loads(orjson.dumps(pop.to_dict()))) == pop


def test_ranking_matches_a_full_recount() -> None:
    rng = random.Random(11)
    half_life, size = 5.0, 10
    items: dict[str, ItemPopularity] = {}
    ranking = PopularityRanking(size, half_life)
    for n in range(3000):
        item = f"i{int(rng.paretovariate(1.2)) % 300}"
        pop = items.setdefault(item, ItemPopularity())
        add_item_event(pop, n * 60.0 + rng.uniform(-600, 0), rng.choice([1.0, 3.0]), half_life)
        ranking.update(item, pop)

    now = max(p.as_of for p in items.values())
    expected = sorted(((i, p.score_at(now, half_life)) for i, p in items.items()), key=lambda x: -x[1])[:size]
    top = ranking.top()
    assert [i for i, _ in top] == [i for i, _ in expected]
    assert [s for _, s in top] == pytest.approx([s for _, s in expected], rel=1e-9)
    assert len(ranking.keys) <= 2 * size


def test_ranking_is_best_first_and_empty_when_cleared() -> None:
    ranking = PopularityRanking(2, 1.0)
    for item, weight in [("a", 1.0), ("b", 3.0), ("c", 2.0)]:
        pop = ItemPopularity()
        add_item_event(pop, 0.0, weight, 1.0)
        ranking.update(item, pop)
    assert ranking.top() == [("b", pytest.approx(3.0)), ("c", pytest.approx(2.0))]
    ranking.clear()
    assert ranking.top() == []
