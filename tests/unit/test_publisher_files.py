"""Event files for `streamrec publish` and the replay stream (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamrec.publisher import InvalidEvent, dataset_events, encode_event, read_event_file
from streamrec.shared.datasets import load_interactions
from streamrec.synthetic import generate


def test_jsonl_and_csv_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(
        '{"user_id": 1, "item_id": "a", "event_type": "view"}\n\n{"user_id": "2", "item_id": 3, "event_type": "purchase", "value": 9.5}\n'
    )
    assert [e["user_id"] for e in read_event_file(jsonl)] == [1, "2"]
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,item_id,event_type,timestamp,value\n1,a,view,1700000000,\n2,b,rating,2024-01-01T00:00:00Z,4\n"
    )
    events = read_event_file(csv)
    assert events[0] == {"user_id": "1", "item_id": "a", "event_type": "view", "timestamp": 1_700_000_000.0}
    assert events[1]["timestamp"] == "2024-01-01T00:00:00Z" and events[1]["value"] == 4.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"user_id": 1, "item_id": 2, "event_type": "view"}\nnot json\n', r"events.jsonl:2: not JSON"),
        ("[1, 2]\n", r"events.jsonl:1: expected a JSON object"),
        ('{"user_id": 1, "event_type": "view"}\n', r"events.jsonl:1: invalid_field: item_id"),
        ("", "no events"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidEvent, match=message):
        read_event_file(path)


def test_dataset_events_are_in_time_order_with_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t300\n2\t20\t3\t100\n1\t30\t4\t100\n")
    events = list(dataset_events(load_interactions(path), "u.data"))
    assert [e["item_id"] for e in events] == ["20", "30", "10"]
    assert [e["event_id"] for e in events] == ["u.data:1", "u.data:2", "u.data:0"]
    assert events[0]["value"] == 3.0 and events[0]["event_type"] == "rating"


def test_synthetic_stream_is_deterministic_and_ordered() -> None:
    first, second = generate(users=30, items=20, seed=5), generate(users=30, items=20, seed=5)
    assert first.equals(second)
    assert first.timestamp.is_monotonic_increasing
    assert not first.duplicated(["user_id", "item_id"]).any()
    assert first.user_id.nunique() == 30


def test_an_event_without_an_id_is_sent_with_a_fresh_one_and_an_id_given_is_kept() -> None:
    event = {"user_id": 7, "item_id": "a", "event_type": "view"}
    first, key = encode_event(event, max_future_seconds=60)
    second, _ = encode_event(event, max_future_seconds=60)
    ids = [orjson.loads(value)["event_id"] for value in (first, second)]
    assert key == "7" and ids[0] and ids[0] != ids[1]  # each publication is its own event
    assert "event_id" not in event  # the caller's mapping is left alone
    kept, _ = encode_event({**event, "event_id": "e-1"}, max_future_seconds=60)
    assert orjson.loads(kept)["event_id"] == "e-1"
    with pytest.raises(InvalidEvent, match="user_id"):
        encode_event({"item_id": "a", "event_type": "view"}, max_future_seconds=60)
