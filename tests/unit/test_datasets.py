"""Interaction file readers: MovieLens formats, generic CSV, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.shared.datasets import DatasetError, in_time_order, load_interactions

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


@pytest.mark.parametrize(
    ("relative", "rows", "users", "items"),
    [("ml-latest-small/ratings.csv", 100_836, 610, 9_724), ("ml-100k/u.data", 100_000, 943, 1_682)],
)
def test_movielens_files(relative: str, rows: int, users: int, items: int) -> None:
    frame = load_interactions(DATASETS / relative)
    assert (len(frame), frame.user_id.nunique(), frame.item_id.nunique()) == (rows, users, items)
    assert frame.row.tolist() == list(range(rows))
    assert frame.value.between(0.5, 5).all() and (frame.event_type == "rating").all()


def test_time_order_is_stable_on_ties(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,a,5\nu1,b,3\nu2,c,5\nu2,d,3\n")
    ordered = in_time_order(load_interactions(path))
    assert ordered.item_id.tolist() == ["b", "d", "a", "c"]


def test_generic_csv_defaults(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id\n1,x\n2,y\n")
    frame = load_interactions(path)
    assert frame.user_id.tolist() == ["1", "2"] and frame.event_type.tolist() == ["view", "view"]
    assert frame.timestamp.tolist() == [0.0, 1.0] and frame.value.isna().all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("what,is,this\n1,2,3\n", "unknown format"),
        ("userId,movieId,rating,timestamp\n1,2,x,4\n", "malformed"),
        ("user_id,item_id,timestamp\n1,,5\n", "empty user or item id"),
    ],
)
def test_malformed_files_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_interactions(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_interactions(tmp_path / "nope.csv")
