"""The garbage collector's watch and freeze: every collection is timed, frozen objects are not walked."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from streamrec.shared import gc_pauses


def _collections(generation: int) -> float:
    return (
        REGISTRY.get_sample_value("streamrec_gc_pause_seconds_count", {"generation": str(generation)}) or 0.0
    )


@pytest.fixture
def watched() -> Iterator[None]:
    before = list(gc.callbacks)
    gc_pauses.watch_gc_pauses(log_over_seconds=0.0)
    yield
    gc.callbacks[:] = before


def test_every_collection_is_timed_and_long_ones_are_logged(
    watched: None, caplog: pytest.LogCaptureFixture
) -> None:
    installed = len(gc.callbacks)
    gc_pauses.watch_gc_pauses()  # a second call installs nothing more
    assert len(gc.callbacks) == installed
    counted = _collections(2)
    with caplog.at_level(logging.WARNING, logger="streamrec.shared.gc_pauses"):
        gc.collect()
    assert _collections(2) == counted + 1
    assert any(record.getMessage() == "long garbage collection pause" for record in caplog.records)


def test_frozen_objects_are_left_out_of_collections() -> None:
    survivor = [[] for _ in range(1000)]  # tracked containers, alive at the freeze
    try:
        gc_pauses.freeze_startup_objects()
        assert gc.get_freeze_count() >= len(survivor)
        assert not any(obj is survivor for obj in gc.get_objects(2))  # no longer walked by gen 2
    finally:
        gc.unfreeze()


def test_a_process_exiting_on_an_error_stops_the_watch(
    watched: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The CLI's error exit: its error line must stay the last one, not a pause of shutdown's collections.
    from streamrec.cli import _fail

    with pytest.raises(SystemExit):
        _fail("the error")
    assert capsys.readouterr().err == "streamrec: error: the error\n"
    counted = _collections(2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamrec.shared.gc_pauses"):
        gc.collect()
    assert _collections(2) == counted and not caplog.records
