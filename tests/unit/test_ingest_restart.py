"""ingest trusts its local tables only after a clean stop (the marker), else rebuilds them."""

from __future__ import annotations

from pathlib import Path

from streamrec.ingest.worker import CLEAN_STOP_MARKER, discard_tables_after_crash


def make_tables(root: Path) -> Path:
    tables = root / "tables"
    (tables / "user_state-0.db").mkdir(parents=True)
    (tables / "user_state-0.db" / "CURRENT").write_text("x")
    return tables


def test_tables_are_discarded_after_an_unclean_exit(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    discard_tables_after_crash(tables, tmp_path / CLEAN_STOP_MARKER)  # no marker: the last run crashed
    assert not tables.exists()


def test_tables_are_kept_after_a_clean_stop_and_the_marker_is_consumed(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    marker = tmp_path / CLEAN_STOP_MARKER
    marker.touch()
    discard_tables_after_crash(tables, marker)
    assert (tables / "user_state-0.db" / "CURRENT").exists()
    assert not marker.exists()  # a crash of the run that starts now must be noticed next time


def test_first_start_has_nothing_to_discard(tmp_path: Path) -> None:
    discard_tables_after_crash(tmp_path / "tables", tmp_path / CLEAN_STOP_MARKER)
    assert not (tmp_path / "tables").exists()
