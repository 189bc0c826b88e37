"""Ingest's write-back of user states (services/ingest/write_back.py): what is read, written, where."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamrec.ingest.features import UserState
from streamrec.ingest.write_back import StateWriteBack


class RecordingTable(dict[str, Any]):
    """A stored table stand-in (what ``ChangelogWriter`` offers) that notes each key's partition and
    each write's size."""

    def __init__(self) -> None:
        super().__init__()
        self.written_on: dict[str, int] = {}
        self.writes: list[tuple[int, int]] = []  # (partition, values) per write

    def read(self, partition: int, key: str) -> Any | None:
        return self.get(key)

    def write(self, partition: int, values: Mapping[str, Any]) -> None:
        self.writes.append((partition, len(values)))
        for key, value in values.items():
            self.written_on[key] = partition
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def state(events: int) -> UserState:
    return UserState(event_count=events)


def test_held_states_are_read_before_the_table_and_reach_it_only_at_the_write() -> None:
    table = RecordingTable()
    table["alice"] = state(1).to_dict()  # stored earlier
    write_back = StateWriteBack(table)

    assert write_back.get(0, "alice") == state(1)  # from the table
    assert write_back.get(0, "bob") is None
    write_back.hold(0, {"alice": state(2), "bob": state(1)})

    assert write_back.get(0, "alice") == state(2)  # held, not yet in the table
    assert table["alice"] == state(1).to_dict() and "bob" not in table
    assert len(write_back) == 2

    assert write_back.write({0}, {}) == {0}
    assert table["alice"] == state(2).to_dict() and table["bob"] == state(1).to_dict()
    assert len(write_back) == 0


def test_each_partition_is_written_on_its_own_partition_in_one_write() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)
    write_back.hold(0, {"alice": state(1)})
    write_back.hold(3, {"carol": state(1)})
    write_back.hold(3, {"dave": state(1)})

    written = write_back.write({0, 3}, {3: {"\x00extra": {"items": []}}, 2: {"\x00extra": {"items": []}}})

    assert written == {0, 3}  # partition 2 is not owned: its extra value is not written
    assert table.written_on == {"alice": 0, "carol": 3, "dave": 3, "\x00extra": 3}
    assert sorted(table.writes) == [(0, 1), (3, 3)]  # a partition's values together: one record batch


def test_extra_values_are_written_on_an_owned_partition_with_nothing_held() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)

    assert write_back.write({0, 1}, {1: {"\x00extra": {}}}) == {1}
    assert table.written_on == {"\x00extra": 1}


def test_states_of_partitions_no_longer_owned_are_dropped_not_written() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)
    write_back.hold(0, {"alice": state(1)})
    write_back.hold(1, {"bob": state(1)})

    assert write_back.write({1}, {0: {"\x00extra": {}}}) == {1}  # partition 0 moved away first
    assert "alice" not in table and "\x00extra" not in table and "bob" in table

    write_back.hold(0, {"alice": state(2)})
    write_back.retain({1})
    assert write_back.get(0, "alice") is None
    assert write_back.write({1}, {}) == set()  # nothing held any more
    assert "alice" not in table


def test_one_partition_can_be_written_between_commits_and_its_wait_restarts() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)
    assert write_back.held_seconds(0) == 0.0
    write_back.hold(0, {"alice": state(1)})
    write_back.hold(1, {"bob": state(1)})
    assert write_back.held_seconds(0) > 0.0

    write_back.write_partition(0)

    assert table.written_on == {"alice": 0} and "bob" not in table
    assert write_back.held_seconds(0) == 0.0 and write_back.held_seconds(1) > 0.0
    assert write_back.get(0, "alice") == state(1)  # now read from the table
    assert write_back.write({0, 1}, {}) == {1} and table["bob"] == state(1).to_dict()


def test_a_forgotten_users_held_state_is_never_written() -> None:
    table = RecordingTable()
    write_back = StateWriteBack(table)
    write_back.hold(0, {"alice": state(1), "bob": state(1)})

    write_back.forget(0, "alice")
    write_back.write({0}, {})

    assert "alice" not in table and "bob" in table
