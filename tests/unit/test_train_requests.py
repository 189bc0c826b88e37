"""Which training cycle answers which "train now" request (services/trainer/requests.py), and the
request files between the CLI and the trainer (shared/train_requests.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.shared.train_requests import REQUEST_TTL_SECONDS, RequestBox, TrainRequest
from streamrec.trainer.requests import CycleRequests
from streamrec.trainer.train import EpochStats

MANIFEST = {"version": "v1", "status": "promoted"}


def epoch(n: int) -> EpochStats:
    return EpochStats(n, loss=1.0, val_ndcg=0.1 * n, val_hr=0.2, seconds=0.1)


@pytest.fixture
def box(tmp_path: Path) -> RequestBox:
    return RequestBox(tmp_path)


def test_a_request_round_trips_through_its_file(box: RequestBox) -> None:
    request = box.submit({0: 12, 1: 0, 3: 7})
    (found,) = box.pending()
    assert found == request and found.features_ends == {0: 12, 1: 0, 3: 7}
    assert box.progress(request.id) is None  # the trainer has not said anything yet


def test_a_request_pending_when_the_cycle_starts_is_answered_by_it(box: RequestBox) -> None:
    request = box.submit({0: 10})
    cycle = CycleRequests(box, box.pending(), max_epochs=5)
    assert box.progress(request.id).state == "catching_up"  # type: ignore[union-attr]
    cycle.caught_up({0: 10})
    cycle.on_epoch(epoch(1))
    progress = box.progress(request.id)
    assert progress is not None and (progress.state, progress.epoch, progress.epochs) == ("training", 1, 5)
    assert progress.metric == {"val_ndcg@10": pytest.approx(0.1)}

    assert cycle.answer(MANIFEST, promoted=True) == [request.id]
    answer = box.progress(request.id)
    assert answer is not None and answer.final and answer.state == "done"
    assert answer.manifest == MANIFEST and answer.promoted and answer.warning == ""
    assert box.pending() == []  # answered: no second cycle for it


def test_a_request_made_during_a_cycle_that_read_its_events_is_answered_by_that_cycle(
    box: RequestBox,
) -> None:
    cycle = CycleRequests(box, [], max_epochs=5)  # a scheduled cycle, no request when it started
    cycle.caught_up({0: 10, 1: 4})
    request = box.submit({0: 10, 1: 4})  # every event it asks for is in the cycle's log already
    cycle.on_epoch(epoch(1))
    assert box.progress(request.id).state == "training"  # type: ignore[union-attr]
    assert cycle.answer(MANIFEST, promoted=True) == [request.id]
    assert box.pending() == []


def test_a_request_made_during_a_cycle_that_misses_some_of_its_events_waits_for_the_next(
    box: RequestBox,
) -> None:
    cycle = CycleRequests(box, [], max_epochs=5)
    cycle.caught_up({0: 10, 1: 4})
    request = box.submit({0: 10, 1: 5})  # one event of partition 1 came after the cycle's catch-up
    cycle.on_epoch(epoch(1))
    queued = box.progress(request.id)
    assert queued is not None and queued.state == "queued" and "in progress" in queued.detail
    assert cycle.answer(MANIFEST, promoted=True) == []
    assert box.pending() == [request]  # the trainer's loop runs the next cycle at once

    following = CycleRequests(box, box.pending(), max_epochs=5)
    following.caught_up({0: 10, 1: 5})
    assert following.answer({"version": "v2"}, promoted=True) == [request.id]
    assert box.progress(request.id).manifest == {"version": "v2"}  # type: ignore[union-attr]


def test_a_cycle_whose_catch_up_stopped_short_says_so(box: RequestBox) -> None:
    request = box.submit({0: 10})
    cycle = CycleRequests(box, box.pending(), max_epochs=5)
    cycle.caught_up({0: 6})  # catch-up timed out
    cycle.answer(MANIFEST, promoted=True)
    answer = box.progress(request.id)
    assert answer is not None and answer.state == "done" and "may miss" in answer.warning


def test_a_cycle_without_a_model_fails_its_requests(box: RequestBox) -> None:
    request = box.submit({0: 10})
    cycle = CycleRequests(box, box.pending(), max_epochs=5)
    cycle.answer(None, error="too little data to train")
    answer = box.progress(request.id)
    assert answer is not None and answer.state == "failed" and answer.detail == "too little data to train"
    assert box.pending() == []


def test_a_withdrawn_request_gets_no_answer_and_leaves_no_file(box: RequestBox) -> None:
    request = box.submit({0: 10})
    cycle = CycleRequests(box, box.pending(), max_epochs=5)
    box.withdraw(request.id)  # the command was interrupted
    cycle.answer(MANIFEST, promoted=True)
    assert box.progress(request.id) is None
    assert list(box.directory.iterdir()) == []


def test_expired_and_unreadable_requests_are_dropped(box: RequestBox) -> None:
    old = box.submit({0: 1})
    (box.directory / "junk.request.json").write_bytes(b"{not json")
    assert box.pending(now=old.requested_at + REQUEST_TTL_SECONDS + 1) == []
    assert list(box.directory.iterdir()) == []


def test_a_request_is_covered_only_by_positions_at_or_past_its_ends() -> None:
    request = TrainRequest("r", 0.0, {0: 10, 1: 0, 2: 3})
    assert request.covered_by({0: 10, 2: 3})  # partition 1 asks for nothing
    assert request.covered_by({0: 11, 1: 2, 2: 9})
    assert not request.covered_by({0: 9, 2: 3})
    assert not request.covered_by({0: 10})
