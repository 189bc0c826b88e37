"""The fold (services/ingest/fold.py) on plain records: no Faust app, no broker.

``Fold.fold`` is the per-user feature update of one run; ``FeatureBuilder.fold_run`` is what the
agents do around it (hold the states, count the popularity, then send), and the commit hook and
forget requests rely on its order. Records, topics and tables here are plain stand-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from streamrec.ingest.commit import CommitHook
from streamrec.ingest.dead_letters import DeadLetters
from streamrec.ingest.erasure import Erasure, ErasureMarkers
from streamrec.ingest.features import UserState, apply_event
from streamrec.ingest.fold import FeatureBuilder, Fold, feature_batches
from streamrec.ingest.metrics import IngestCounters
from streamrec.ingest.popularity_deltas import PendingPopularity, read_deltas
from streamrec.ingest.rekeying import partition_for
from streamrec.ingest.write_back import PartitionLocks, StateWriteBack
from streamrec.shared.events import Interaction, RejectReason
from streamrec.shared.messages import FeatureBatch, ForgetUser, UserSnapshot, decode_feature_batch
from streamrec.shared.settings import Settings

SETTINGS = Settings(history_len=3, dedup_window=10, partitions=4)
T0 = 1_700_000_000.0


@dataclass
class Record:
    """What the fold reads of a Kafka message."""

    key: bytes | None
    value: bytes | None
    topic: str = "interactions"
    partition: int = 0
    offset: int = 0


def interaction(user: str, item: str, ts: float, event_id: str | None = None) -> Interaction:
    return Interaction(user, item, "view", T0 + ts, value=None, event_id=event_id)


def home(event: Interaction) -> Record:
    """An input record keyed by its event's user id: folded where it lies."""
    return Record(event.user_id.encode(), orjson.dumps(event.to_dict()))


def stored(*events: Interaction) -> UserState:
    state = UserState()
    for event in events:
        assert apply_event(state, event, SETTINGS)
    return state


class DictTable(dict[str, Any]):
    """A stored table stand-in (what ``ChangelogWriter`` offers StateWriteBack): reads and writes."""

    def read(self, partition: int, key: str) -> Any | None:
        return self.get(key)

    def write(self, partition: int, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if value is None:
                del self[key]
            else:
                self[key] = value


def new_fold(table: DictTable | None = None, markers: ErasureMarkers | None = None) -> tuple[Fold, DictTable]:
    table = DictTable() if table is None else table
    return Fold(SETTINGS, StateWriteBack(table), markers or ErasureMarkers(60.0)), table


# --- Fold.fold ----------------------------------------------------------------------------------


def test_home_events_are_applied_to_their_users_in_order() -> None:
    fold, _ = new_fold()
    events = [interaction("alice", "i1", 1), interaction("bob", "i2", 2), interaction("alice", "i3", 3)]

    folded = fold.fold(0, [home(e) for e in events], rekeyed=False)

    assert list(folded.states) == ["alice", "bob"]  # first-touch order
    assert folded.states["alice"] == stored(events[0], events[2])
    assert folded.states["bob"] == stored(events[1])
    assert folded.accepted == events
    assert (folded.valid, folded.rekey, folded.refused, folded.erased, folded.duplicates) == (3, [], [], 0, 0)


def test_a_stored_state_is_continued_and_the_table_is_not_written() -> None:
    old = [interaction("alice", f"i{n}", n) for n in range(3)]  # a full history (history_len=3)
    table = DictTable({"alice": stored(*old).to_dict()})
    before = orjson.dumps(table)
    fold, _ = new_fold(table)

    folded = fold.fold(0, [home(interaction("alice", "i9", 9))], rekeyed=False)

    state = folded.states["alice"]
    assert state.history_item_ids() == ["i1", "i2", "i9"]  # the oldest made room
    assert state.event_count == 4
    assert state.first_seen == T0 and state.last_seen == T0 + 9
    assert orjson.dumps(table) == before  # nothing stored: the states are held, then written at the commit


def test_invalid_records_are_refused_with_their_reason_and_change_no_state() -> None:
    fold, _ = new_fold()
    not_json = Record(b"alice", b"{not json", offset=1)
    tombstone = Record(b"alice", None, offset=2)
    no_item = Record(b"alice", orjson.dumps({"user_id": "alice", "event_type": "view"}), offset=3)
    valid = home(interaction("bob", "i1", 1))

    folded = fold.fold(0, [not_json, tombstone, no_item, valid], rekeyed=False)

    assert [(record, reason) for record, reason, _ in folded.refused] == [
        (not_json, RejectReason.NOT_JSON),
        (tombstone, RejectReason.NOT_JSON),  # a tombstone is an empty payload
        (no_item, RejectReason.INVALID_FIELD),
    ]
    assert all(detail for _, _, detail in folded.refused)
    assert list(folded.states) == ["bob"] and folded.valid == 1


def test_events_not_keyed_by_their_user_are_left_for_the_rekey_topic() -> None:
    fold, _ = new_fold()
    unkeyed = interaction("alice", "i1", 1)
    keyed_by_another = interaction("alice", "i2", 2)
    at_home = interaction("alice", "i3", 3)
    records = [
        Record(None, orjson.dumps(unkeyed.to_dict())),
        Record(b"bob", orjson.dumps(keyed_by_another.to_dict())),
        home(at_home),
    ]

    folded = fold.fold(0, records, rekeyed=False)

    assert folded.rekey == [unkeyed, keyed_by_another]
    assert folded.states == {"alice": stored(at_home)}  # only the one at home is folded here
    assert folded.valid == 1


def test_rekeyed_records_are_folded_whatever_their_key_and_unreadable_ones_refused() -> None:
    fold, _ = new_fold()
    event = interaction("alice", "i1", 1)
    readable = Record(b"not-alice", orjson.dumps(event.to_dict()), topic="streamrec-ingest-rekeyed")
    unreadable = Record(b"alice", b"[1, 2]", topic="streamrec-ingest-rekeyed")

    folded = fold.fold(0, [readable, unreadable], rekeyed=True)

    assert folded.states == {"alice": stored(event)} and folded.rekey == []
    ((record, reason, detail),) = folded.refused
    assert record is unreadable and reason == "unexpected_error"
    assert detail.startswith("unreadable re-keyed record")


def test_duplicates_are_dropped_counted_and_announce_nothing() -> None:
    seen = interaction("alice", "i1", 1, event_id="e1")
    fold, _ = new_fold(DictTable({"alice": stored(seen).to_dict(), "bob": stored(seen).to_dict()}))
    again = interaction("alice", "i1", 1, event_id="e1")
    fresh = interaction("alice", "i2", 2, event_id="e2")
    records = [home(again), home(fresh), home(fresh), home(interaction("bob", "i1", 1, event_id="e1"))]

    folded = fold.fold(0, records, rekeyed=False)

    assert folded.accepted == [fresh]
    assert folded.duplicates == 3
    assert folded.states == {"alice": stored(seen, fresh)}  # bob had only duplicates: no features for bob
    assert folded.states["alice"].event_count == 2


def test_a_forgotten_users_events_up_to_the_request_are_dropped_on_that_partition_only() -> None:
    markers = ErasureMarkers(hold_seconds=60.0)
    markers.mark(0, "alice", requested_at=T0 + 100, now=T0 + 100)
    fold, _ = new_fold(markers=markers)
    before, at, after = (interaction("alice", f"i{n}", n) for n in (50, 100, 150))
    other = interaction("bob", "i1", 60)

    on_0 = fold.fold(0, [home(before), home(at), home(after), home(other)], rekeyed=False)
    on_1 = fold.fold(1, [home(before)], rekeyed=False)

    assert on_0.erased == 2
    assert on_0.accepted == [after, other]
    assert on_0.states["alice"] == stored(after)  # a new history
    assert on_1.erased == 0 and on_1.accepted == [before]


def test_a_folded_run_is_announced_as_its_users_snapshots_with_their_events() -> None:
    fold, _ = new_fold(DictTable({"alice": stored(interaction("alice", "i0", 0)).to_dict()}))
    events = [interaction("alice", "i1", 1), interaction("bob", "i2", 2)]
    folded = fold.fold(0, [home(e) for e in events], rekeyed=False)

    assert feature_batches(folded.states, folded.states, folded.accepted, now=5.0) == [
        FeatureBatch([UserSnapshot("alice", ["i0", "i1"], 2), UserSnapshot("bob", ["i2"], 1)], events, 5.0)
    ]


# --- FeatureBuilder.fold_run, the commit hook and forget requests around it ---------------------


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: Any
    partition: int | None
    held: int  # user states held by the write-back when it was sent


@dataclass
class FakeTopic:
    """A topic stand-in that records each send, with what the write-back held at that moment."""

    name: str
    log: list[Sent]
    write_back: StateWriteBack | None = None
    gate: asyncio.Event | None = None  # when set up, a send waits for it

    async def send(self, key: bytes | None = None, value: Any = None, partition: int | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        held = 0 if self.write_back is None else len(self.write_back)
        self.log.append(Sent(self.name, key, value, partition, held))


class FakeTable(DictTable):
    """A table stand-in: writes are logged; deleting a key it lacks is a tombstone anyway, as in Faust."""

    def __init__(self, log: list[Sent]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append(Sent("user_state", key.encode(), value, None, 0))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append(Sent("user_state", key.encode(), None, None, 0))
        self.pop(key, None)


@dataclass
class FakeEvent:
    """A stream event: the fold reads its message (a run: partition and records)."""

    message: Any


@dataclass
class FakeRun:
    partition: int
    value: list[Record]


@dataclass
class Ingest:
    """The event path's objects, wired as app.py wires them, on fake topics and tables."""

    log: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counters = IngestCounters()
        self.table = FakeTable(self.log)
        self.write_back = StateWriteBack(self.table)
        self.markers = ErasureMarkers(60.0)
        self.locks = PartitionLocks()
        topic = self.topic
        self.features = topic("user-features")
        self.popularity = PendingPopularity(topic("item-events"), 24.0, self.counters)  # type: ignore[arg-type]
        self.builder = FeatureBuilder(
            SETTINGS,
            Fold(SETTINGS, self.write_back, self.markers),
            self.write_back,
            self.popularity,
            self.locks,
            DeadLetters(topic("interactions.dlq"), self.counters),  # type: ignore[arg-type]
            topic("rekeyed"),  # type: ignore[arg-type]
            self.features,  # type: ignore[arg-type]
            self.counters,
        )
        self.commit = CommitHook(self.write_back, self.popularity, self.table, lambda: set(range(4)))
        self.erasure = Erasure(
            SETTINGS,
            self.markers,
            {},
            self.table,
            self.write_back,
            self.locks,
            self.features,  # type: ignore[arg-type]
            lambda: set(range(4)),
            self.counters,
        )

    def topic(self, name: str) -> FakeTopic:
        return FakeTopic(name, self.log, self.write_back)

    def sent(self, topic: str) -> list[Sent]:
        return [entry for entry in self.log if entry.topic == topic]


def test_a_run_is_held_and_counted_before_anything_is_sent_and_written_only_at_the_commit() -> None:
    ingest = Ingest()
    alice = interaction("alice", "i1", 1)
    away = interaction("bob", "i2", 2)
    run = FakeRun(
        2,
        [
            home(alice),
            Record(b"alice", b"nope", partition=2, offset=7),
            Record(None, orjson.dumps(away.to_dict())),
        ],
    )

    asyncio.run(ingest.builder.fold_run(FakeEvent(run), rekeyed=False))

    # The sends, in this order, each after the run's state was held (the commit may run at any of them).
    assert [(entry.topic, entry.held) for entry in ingest.log] == [
        ("interactions.dlq", 1),
        ("rekeyed", 1),
        ("user-features", 1),
    ]
    dead, rekeyed, features = ingest.log
    letter = orjson.loads(dead.value)
    assert (letter["reason"], letter["payload"], letter["source"]) == (
        "not_json",
        "nope",
        {"topic": "interactions", "partition": 2, "offset": 7},
    )
    assert dead.key == b"alice"  # keyed as the original was
    assert (rekeyed.key, rekeyed.partition) == (b"bob", partition_for("bob", SETTINGS.partitions))
    assert Interaction.from_dict(orjson.loads(rekeyed.value)) == away
    assert features.partition == 2  # announced on the run's partition
    batch = decode_feature_batch(features.value)
    assert batch.users == [UserSnapshot("alice", ["i1"], 1)] and batch.events == [alice]
    assert (ingest.counters.accepted, ingest.counters.rekeyed, dict(ingest.counters.rejected)) == (
        1,
        1,
        {"not_json": 1},
    )

    asyncio.run(ingest.commit.before_commit())

    # The commit hook: the run's popularity first, then its held state into the table.
    assert [entry.topic for entry in ingest.log[3:]] == ["item-events", "user_state"]
    (delta,) = read_deltas(ingest.log[3].value)
    assert delta[0] == "i1" and delta[1].count == 1
    assert UserState.from_dict(ingest.table["alice"]) == stored(alice)
    assert len(ingest.write_back) == 0


def test_a_forget_request_waits_for_the_runs_features_and_its_erasure_comes_after_them() -> None:
    partition = partition_for("alice", SETTINGS.partitions)

    async def scenario(ingest: Ingest) -> None:
        ingest.features.gate = asyncio.Event()  # the broker is slow: the run's features are not out yet
        run = FakeRun(partition, [home(interaction("alice", "i1", 1))])
        folding = asyncio.ensure_future(ingest.builder.fold_run(FakeEvent(run), rekeyed=False))
        await asyncio.sleep(0)  # the run is folded and held, its send waits
        request = Record(b"alice", ForgetUser("alice", T0 + 10).to_json(), partition=partition)
        forgetting = asyncio.ensure_future(ingest.erasure.forget_user(FakeEvent(request)))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert ingest.write_back.get(partition, "alice") is not None  # not erased while the run is out
        ingest.features.gate.set()
        await asyncio.gather(folding, forgetting)

    ingest = Ingest()
    asyncio.run(scenario(ingest))

    messages = [decode_feature_batch(entry.value) for entry in ingest.sent("user-features")]
    assert [m.forgotten for m in messages] == [[], ["alice"]]  # the run's features, then the erasure
    assert [u.user_id for u in messages[0].users] == ["alice"]
    assert ingest.write_back.get(partition, "alice") is None and "alice" not in ingest.table
    assert ingest.markers.cutoff(partition, "alice") == T0 + 10


@pytest.mark.parametrize("rekeyed", [False, True])
def test_an_empty_run_sends_nothing(rekeyed: bool) -> None:
    ingest = Ingest()
    asyncio.run(ingest.builder.fold_run(FakeEvent(FakeRun(0, [])), rekeyed=rekeyed))
    assert ingest.log == [] and len(ingest.write_back) == 0


def test_a_forget_request_is_announced_where_the_user_was_and_at_home_only() -> None:
    home_partition = partition_for("alice", SETTINGS.partitions)
    elsewhere, never_there, *_ = (p for p in range(SETTINGS.partitions) if p != home_partition)
    ingest = Ingest()
    run = FakeRun(elsewhere, [home(interaction("alice", "i1", 1))])
    asyncio.run(ingest.builder.fold_run(FakeEvent(run), rekeyed=False))
    ingest.log.clear()

    for partition in (elsewhere, never_there, home_partition):
        request = Record(b"alice", ForgetUser("alice", T0 + 10).to_json(), partition=partition)
        asyncio.run(ingest.erasure.forget_user(FakeEvent(request)))  # type: ignore[arg-type]

    announced = [
        (entry.partition, decode_feature_batch(entry.value).forgotten)
        for entry in ingest.sent("user-features")
    ]
    assert announced == [(elsewhere, ["alice"]), (home_partition, ["alice"])]
    # A marker on every partition the request came through.
    assert all(ingest.markers.cutoff(p, "alice") == T0 + 10 for p in (elsewhere, never_there, home_partition))
    assert ingest.counters.forgotten == 3
