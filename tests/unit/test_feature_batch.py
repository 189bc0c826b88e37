"""The user-features message (shared/messages.py FeatureBatch) and how ingest splits a run into them."""

from __future__ import annotations

import orjson
import pytest

from streamrec.ingest.features import UserState, apply_event
from streamrec.ingest.fold import feature_batches
from streamrec.shared.events import Interaction
from streamrec.shared.messages import (
    FeatureBatch,
    FeatureBatchDecodeError,
    UserSnapshot,
    decode_feature_batch,
    feature_batch_event_count,
)
from streamrec.shared.settings import Settings


def event(user: str, item: str, ts: float) -> Interaction:
    return Interaction(user, item, "view", ts, value=None, event_id=f"{user}:{item}:{ts}")


def test_a_batch_round_trips_through_json() -> None:
    batch = FeatureBatch(
        [UserSnapshot("u1", ["a", "b"], 2)], [event("u1", "a", 1.0), event("u1", "b", 2.0)], 5.0
    )
    assert decode_feature_batch(batch.to_json()) == batch
    assert feature_batch_event_count(batch.to_json()) == 2


def test_the_older_one_event_message_is_read_as_a_batch_of_one() -> None:
    old = {
        "user_id": "u1",
        "event": event("u1", "a", 1.0).to_dict(),
        "history": ["a"],
        "event_count": 7,
        "updated_at": 3.0,
    }
    assert decode_feature_batch(orjson.dumps(old)) == FeatureBatch(
        [UserSnapshot("u1", ["a"], 7)], [event("u1", "a", 1.0)], 3.0
    )


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"users": [["u1"]]}', b'{"users": 1}', None])
def test_an_unreadable_message_raises_one_error_type_and_counts_no_events(raw: bytes | None) -> None:
    with pytest.raises(FeatureBatchDecodeError):
        decode_feature_batch(raw)
    assert feature_batch_event_count(raw or b"") == 0


def test_a_large_run_is_split_by_users_and_keeps_every_event_once_in_order() -> None:
    settings = Settings(history_len=200)
    states: dict[str, UserState] = {}
    events = [event(f"u{n % 900}", f"i{n}", float(n)) for n in range(9_000)]
    users: dict[str, None] = {}
    for e in events:
        apply_event(states.setdefault(e.user_id, UserState()), e, settings)
        users[e.user_id] = None
    batches = feature_batches(users, states, events, now=1.0)
    assert len(batches) > 1
    assert [u.user_id for b in batches for u in b.users] == list(users)  # each user once, first-touch order
    for b in batches:
        members = {u.user_id for u in b.users}
        assert {e.user_id for e in b.events} <= members
        assert len(b.to_json()) < 1_000_000  # Kafka's default message size
    assert sorted((e.user_id, e.timestamp) for b in batches for e in b.events) == sorted(
        (e.user_id, e.timestamp) for e in events
    )
    for b in batches:  # within a user, the events keep the order they were applied in
        for user in b.users:
            own = [e.timestamp for e in b.events if e.user_id == user.user_id]
            assert own == sorted(own)


def test_a_small_run_is_one_message() -> None:
    settings = Settings()
    state = UserState()
    e = event("u1", "a", 1.0)
    apply_event(state, e, settings)
    (batch,) = feature_batches({"u1": None}, {"u1": state}, [e], now=2.0)
    assert batch == FeatureBatch([UserSnapshot("u1", ["a"], 1)], [e], 2.0)


def test_events_are_written_as_interaction_to_dict_writes_them() -> None:
    events = [
        Interaction("u1", "i1", "view", 1.5),
        Interaction("u1", "i2", "rating", 2.0, value=4.5, event_id="e-2"),
    ]
    written = orjson.loads(FeatureBatch([UserSnapshot("u1", ["i1", "i2"], 2)], events, 3.0).to_json())
    assert written["events"] == [event.to_dict() for event in events]
    assert [list(event) for event in written["events"]] == [
        list(event.to_dict()) for event in events
    ]  # key order
