"""When the continuous trainer retrains, and on which window of events."""

from __future__ import annotations

import pandas as pd
import pytest

from streamrec.trainer.service import CycleSchedule, within_days


@pytest.mark.parametrize(
    ("trigger", "seconds_since", "new_events", "due"),
    [
        ("any", 10, 0, False),  # nothing new, nothing to do
        ("any", 10, 100, True),  # enough events before the interval
        ("any", 400, 1, True),  # interval passed with something new
        ("any", 400, 0, False),  # interval passed, nothing new
        ("any", 10, 99, False),
        ("all", 10, 100, False),  # both needed
        ("all", 400, 99, False),
        ("all", 400, 100, True),
    ],
)
def test_due_follows_the_trigger(trigger: str, seconds_since: float, new_events: int, due: bool) -> None:
    schedule = CycleSchedule(300.0, 100, trigger, last_cycle_at=1_000.0, last_cycle_seq=50)
    assert schedule.due(1_000.0 + seconds_since, 50 + new_events) is due


def test_mark_restarts_the_wait() -> None:
    schedule = CycleSchedule(300.0, 100, "any")
    assert schedule.due(5_000.0, 100)  # first model: enough events in the log
    schedule.mark(5_000.0, 100)
    assert not schedule.due(5_001.0, 150) and schedule.due(5_301.0, 101)


def test_within_days_keeps_the_recent_events_by_timestamp() -> None:
    day = 86_400.0
    events = pd.DataFrame({"user_id": list("abcd"), "timestamp": [0.0, 5 * day, 9 * day, 10 * day]})
    assert within_days(events, 0).equals(events)
    assert within_days(events, 5).user_id.tolist() == ["b", "c", "d"]
    assert within_days(events, 0.5).user_id.tolist() == ["d"]
