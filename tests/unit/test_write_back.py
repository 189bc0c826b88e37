"""Ingest's write-back of user states (services/ingest/write_back.py): what is read, written, where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.streams import current_event

from streamrec.ingest.features import UserState
from streamrec.ingest.write_back import StateWriteBack


@dataclass
class FakeMessage:
    partition: int


@dataclass
class FakeEvent:
    message: FakeMessage


class RecordingTable(dict[str, Any]):
    """A table stand-in that notes the partition of the current event at every write, as Faust does."""

    def __init__(self) -> None:
        super().__init__()
        self.written_on: dict[str, int] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        event = current_event()
        assert event is not None, "a table write outside any event"
        self.written_on[key] = event.message.partition
        super().__setitem__(key, value)

    @property
    def data(self) -> RecordingTable:
        """The store under the table, which reads go to: the table itself here."""
        return self


def state(events: int) -> UserState:
    return UserState(event_count=events)


def test_held_states_are_read_before_the_table_and_reach_it_only_at_the_write() -> None:
    table = RecordingTable()
    dict.__setitem__(table, "alice", state(1).to_dict())  # stored earlier
    write_back = StateWriteBack(table)  # type: ignore[arg-type]

    assert write_back.get(0, "alice") == state(1)  # from the table
    assert write_back.get(0, "bob") is None
    write_back.hold(FakeEvent(FakeMessage(0)), {"alice": state(2), "bob": state(1)})  # type: ignore[arg-type]

    assert write_back.get(0, "alice") == state(2)  # held, not yet in the table
    assert table["alice"] == state(1).to_dict() and "bob" not in table
    assert len(write_back) == 2

    assert write_back.write({0}, {}) == {0}
    assert table["alice"] == state(2).to_dict() and table["bob"] == state(1).to_dict()
    assert len(write_back) == 0


def test_each_partition_is_written_under_its_own_latest_event() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)  # type: ignore[arg-type]
    write_back.hold(FakeEvent(FakeMessage(0)), {"alice": state(1)})  # type: ignore[arg-type]
    write_back.hold(FakeEvent(FakeMessage(3)), {"carol": state(1)})  # type: ignore[arg-type]

    written = write_back.write({0, 3}, {3: {"\x00extra": {"items": []}}})

    assert written == {0, 3}
    assert table.written_on == {"alice": 0, "carol": 3, "\x00extra": 3}
    assert current_event() is None  # the writes leave no event behind


def test_states_of_partitions_no_longer_owned_are_dropped_not_written() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)  # type: ignore[arg-type]
    write_back.hold(FakeEvent(FakeMessage(0)), {"alice": state(1)})  # type: ignore[arg-type]
    write_back.hold(FakeEvent(FakeMessage(1)), {"bob": state(1)})  # type: ignore[arg-type]

    assert write_back.write({1}, {0: {"\x00extra": {}}}) == {1}  # partition 0 moved away first
    assert "alice" not in table and "\x00extra" not in table and "bob" in table

    write_back.hold(FakeEvent(FakeMessage(0)), {"alice": state(2)})  # type: ignore[arg-type]
    write_back.retain({1})
    assert write_back.get(0, "alice") is None
    assert write_back.write({0, 1}, {0: {"\x00extra": {}}}) == {1}  # no event of partition 0 left
    assert "alice" not in table


def test_one_partition_can_be_written_between_commits_and_its_wait_restarts() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)  # type: ignore[arg-type]
    assert write_back.held_seconds(0) == 0.0
    write_back.hold(FakeEvent(FakeMessage(0)), {"alice": state(1)})  # type: ignore[arg-type]
    write_back.hold(FakeEvent(FakeMessage(1)), {"bob": state(1)})  # type: ignore[arg-type]
    assert write_back.held_seconds(0) > 0.0

    write_back.write_partition(0)

    assert table.written_on == {"alice": 0} and "bob" not in table
    assert write_back.held_seconds(0) == 0.0 and write_back.held_seconds(1) > 0.0
    assert write_back.get(0, "alice") == state(1)  # now read from the table
    assert write_back.write({0, 1}, {}) == {0, 1} and table["bob"] == state(1).to_dict()
