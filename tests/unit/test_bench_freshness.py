"""The freshness benchmark's pure parts: matching events to list rewrites, counting what the pipeline
wrote between two readings, and a latency row against its baseline (bench/freshness/, bench/harness.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.capacity import Step
from bench.freshness.broker_writes import written_between
from bench.freshness.tracker import UpdateTracker
from bench.harness import latency_figure


def test_an_event_is_matched_to_the_first_rewrite_of_its_users_list_after_it() -> None:
    tracker = UpdateTracker()
    tracker.published("u1", "e1", 10.0)
    tracker.updated("u1", 10.25)
    tracker.updated("u1", 10.5)  # no event in flight any more
    assert tracker.latencies_ms() == [250.0]
    assert tracker.unsolicited == 1


def test_a_user_with_two_events_in_flight_is_left_out_for_the_rest_of_the_run() -> None:
    tracker = UpdateTracker()
    tracker.published("u1", "e1", 1.0)
    tracker.published("u1", "e2", 2.0)
    tracker.published("u1", "e3", 3.0)
    tracker.updated("u1", 4.0)
    assert tracker.overlapped == 3
    assert tracker.updated_at == {} and tracker.pending == {} and tracker.unsolicited == 0


def test_written_between_sums_the_growth_of_the_chosen_topics() -> None:
    before = {"a": (2, 20), "b": (1, 10)}
    after = {"a": (5, 50), "b": (4, 40), "c": (1, 3)}
    assert written_between(before, after, lambda topic: topic != "b") == (4, 33)
    assert written_between(before, after, lambda topic: topic == "b") == (3, 30)


def test_a_latency_figure_is_each_runs_percentile_in_ms_against_the_baselines() -> None:
    figure = latency_figure("read p50", [[0.001, 0.003], [0.002]], "raw GET", [[0.0005]], 50, "≤ 1 ms")
    assert figure.unit == "ms" and figure.target == "≤ 1 ms" and figure.baseline_name == "raw GET"
    assert figure.runs == pytest.approx([3.0, 2.0])  # nearest rank: the upper of two
    assert figure.baseline_runs == pytest.approx([0.5])


def _step(rate: float, latency_s: float, publish_rate: float, missing: bool = False) -> Step:
    tracker = UpdateTracker()
    for n in range(100):
        tracker.published(f"u{n}", f"e{n}", 1.0)
        if not (missing and n == 0):
            tracker.updated(f"u{n}", 1.0 + latency_s)
    result = SimpleNamespace(tracker=tracker, publish_rate=publish_rate, missing=len(tracker.pending), cpu={})
    return Step(rate, result)  # type: ignore[arg-type]


def test_a_capacity_step_passes_within_the_bound_with_every_list_and_the_rate_kept() -> None:
    assert _step(2_500, 0.4, 2_500).passed
    assert not _step(2_500, 0.6, 2_500).passed  # p99 over the bound
    assert not _step(2_500, 0.4, 2_500, missing=True).passed  # an event without its list
    assert not _step(2_500, 0.4, 2_000).passed  # the producer fell behind its rate


def test_paced_awaits_every_send_in_order_and_reports_the_rate() -> None:
    import asyncio

    from bench.freshness.load import SEND_AHEAD_SECONDS, paced

    sent: list[int] = []

    async def send(seq: int) -> None:  # a send that yields, as the fault tests' streams do
        sent.append(seq)
        await asyncio.sleep(0)

    rate = asyncio.run(paced(2000.0, 40, send, lambda: ""))

    assert sent == list(range(40))
    # The schedule is kept: the last event (due at 39/2000 s) leaves at most SEND_AHEAD_SECONDS early.
    assert 0 < rate <= 40 / (39 / 2000.0 - SEND_AHEAD_SECONDS)
