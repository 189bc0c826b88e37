"""Item scores held between commits (services/ingest/item_popularity.py, HeldItemPopularity)."""

from __future__ import annotations

from typing import Any

from faust.streams import current_event

from streamrec.ingest.features import ItemPopularity
from streamrec.ingest.item_popularity import HeldItemPopularity


class RecordingTable(dict[str, Any]):
    """A table stand-in that notes the topic and partition of the current event at every write, as
    Faust routes a table write by them."""

    def __init__(self) -> None:
        super().__init__()
        self.written_under: dict[str, tuple[str, int]] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        event = current_event()
        assert event is not None, "a table write outside any event"
        self.written_under[key] = (event.message.topic, event.message.partition)
        super().__setitem__(key, value)


def test_held_scores_are_read_before_the_table_and_written_only_by_write() -> None:
    table = RecordingTable()
    dict.__setitem__(table, "old", ItemPopularity(1.0, 10.0, 1).to_dict())  # stored earlier
    held = HeldItemPopularity(table, "item-events", stored=table)  # type: ignore[arg-type]

    assert held.get("old") == ItemPopularity(1.0, 10.0, 1)  # from the table
    assert held.get("new") is None
    newer = ItemPopularity(3.0, 20.0, 2)
    held.hold("old", newer)
    assert held.get("old") is newer  # held, not yet in the table: the caller changes it in place
    assert table["old"] == ItemPopularity(1.0, 10.0, 1).to_dict()

    assert held.write() == 1
    assert table["old"] == newer.to_dict() and len(held) == 0
    assert table.written_under == {"old": ("item-events", 0)}  # the table's one partition


def test_dropped_scores_are_never_written() -> None:
    table = RecordingTable()
    held = HeldItemPopularity(table, "item-events", stored=table)  # type: ignore[arg-type]
    held.hold("a", ItemPopularity(1.0, 1.0, 1))
    held.drop()
    assert held.write() == 0 and table == {}
