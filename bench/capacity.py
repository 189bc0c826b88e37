"""Capacity at the freshness bound (figure 12): the highest steady event rate at which p99 freshness
stays within its bound and every event's list is rewritten, found by stepping the rate.

One stack (one ingest worker, one scorer, Redis, the broker ``BENCH_BROKER`` names), warmed up as
figure 2's (``bench/freshness/warm_up.py``) over ``BENCH_CAPACITY_USERS`` users (default 50,000).
Then one measured run per step of ``BENCH_CAPACITY_RATES`` (events/s, ascending; default
1,500 to 3,500 by 500), each ``BENCH_CAPACITY_SECONDS`` long (default 40), users cycling over all
of them, measured exactly as figure 2's runs (``bench/freshness/measured_run.py``). A step passes
when its p99 is within the bound, no event is left without its list rewritten, and the producer kept
its rate; stepping stops at the first step that fails. The CPU each process used per 1,000 events
at each step is the arithmetic of what the cores allow.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.brokers import BrokerChoice, broker, chosen
from bench.freshness.measured_run import RunResult, measure_run
from bench.freshness.sizes import PARTITIONS, Size
from bench.freshness.warm_up import warm_up
from bench.harness import Figure, Section, log_progress, percentile
from bench.stack import running_stack

BOUND_MS = 500.0  # p99 freshness bound of a step
DEFAULT_RATES = "1500,2000,2500,3000,3500"
KEPT_RATE = 0.98  # a step whose producer fell below this share of its rate did not hold the rate


@dataclass
class Step:
    """One rate's measured run."""

    rate: float
    result: RunResult

    def latency_ms(self, q: float) -> float:
        """The q-th percentile of publish → list in Redis (infinite if no list was rewritten)."""
        latencies = self.result.tracker.latencies_ms()
        return percentile(latencies, q) if latencies else float("inf")

    @property
    def passed(self) -> bool:
        """Within the bound, every list rewritten, the rate kept."""
        return (
            self.latency_ms(99) <= BOUND_MS
            and self.result.missing == 0
            and self.result.publish_rate >= KEPT_RATE * self.rate
        )

    def cpu_per_thousand(self) -> dict[str, float]:
        """CPU seconds each process used per 1,000 events published (its share of a core / rate)."""
        return {name: 10 * share / self.result.publish_rate for name, share in self.result.cpu.items()}


def run(quick: bool) -> list[Section]:
    """The capacity section: each step's p50/p99 and counts, and the highest step that passed."""
    users = 200 if quick else int(os.environ.get("BENCH_CAPACITY_USERS", "50000"))
    rates = [
        float(r)
        for r in (("40,80" if quick else os.environ.get("BENCH_CAPACITY_RATES", DEFAULT_RATES)).split(","))
    ]
    seconds = 3.0 if quick else float(os.environ.get("BENCH_CAPACITY_SECONDS", "40"))
    choice = chosen()
    steps: list[Step] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker(Path(tmp), choice) as kafka,
        running_stack(Path(tmp), partitions=PARTITIONS, metrics_port=0, **kafka.overrides) as stack,
    ):
        first = Size(users=users, rate=rates[0], seconds=seconds, baseline_seconds=min(seconds, 10.0), runs=1)
        user_ids, items, version = warm_up(stack, first)
        for n in range(kafka.choice.warm_up_runs):  # a JVM broker warms up: measured, then discarded
            measure_run(stack, first, n, user_ids, items, version, kafka)
        for n, rate in enumerate(rates):
            size = Size(
                users=users, rate=rate, seconds=seconds, baseline_seconds=min(seconds, 10.0), runs=len(rates)
            )
            step = Step(
                rate, measure_run(stack, size, kafka.choice.warm_up_runs + n, user_ids, items, version, kafka)
            )
            steps.append(step)
            log_progress(
                f"  capacity step {rate:,.0f}/s: p50 {step.latency_ms(50):,.0f} ms, p99 {step.latency_ms(99):,.0f} ms, "
                f"{step.result.missing:,} without their list, {'passed' if step.passed else 'failed'}"
            )
            if not step.passed:
                break
    return [_section(choice, users, seconds, steps, quick)]


def _section(choice: BrokerChoice, users: int, seconds: float, steps: list[Step], quick: bool) -> Section:
    """Figure 12's section from the steps measured."""
    passed = [step.rate for step in steps if step.passed]
    figures = [
        Figure(
            "capacity: highest rate within the bound",
            "events/s",
            [max(passed, default=0.0)],
            target="≥ 2,500 events/s",
        )
    ]
    for step in steps:
        name = f"{step.rate:,.0f} events/s"
        figures += [
            Figure(f"{name}: publish → list in Redis, p50", "ms", [step.latency_ms(50)]),
            Figure(
                f"{name}: publish → list in Redis, p99",
                "ms",
                [step.latency_ms(99)],
                target=f"≤ {BOUND_MS:,.0f} ms",
            ),
            Figure(
                f"{name}: one produce→consume hop, p99",
                "ms",
                [percentile(step.result.baseline_ms, 99)] if step.result.baseline_ms else [0.0],
            ),
            Figure(
                f"{name}: events without their list rewritten", "events", [step.result.missing], target="0"
            ),
            Figure(f"{name}: producer rate achieved", "events/s", [step.result.publish_rate]),
            *(
                Figure(f"{name}: CPU of {process} per 1,000 events", "core-s", [cpu])
                for process, cpu in step.cpu_per_thousand().items()
            ),
            Figure(f"{name}: CPU of all processes", "% of a core", [sum(step.result.cpu.values())]),
        ]
    rates = os.environ.get("BENCH_CAPACITY_RATES", DEFAULT_RATES)
    command = (
        choice.env
        + ("" if rates == DEFAULT_RATES else f"BENCH_CAPACITY_RATES={rates} ")
        + "python -m bench --only capacity"
        + (" --quick" if quick else "")
    )
    on = "" if choice.embedded else f" — {choice.label}"
    return Section(
        f"Capacity at the freshness bound (figure 12){on}",
        command,
        figures,
        description=(
            f"One stack ({choice.label}, topics at replication factor {choice.replication_factor}, one "
            f"ingest worker, one scorer, embedded Redis, {PARTITIONS} partitions), warmed up as figure 2's "
            f"over {users:,} users (a SASRec model served, every list from it). Then one run of "
            f"{seconds:.0f} s per rate, ascending, users cycling over all {users:,}, each measured as a run "
            f"of figure 2 (publish → the user's list rewritten in Redis). A rate passes when p99 ≤ "
            f"{BOUND_MS:,.0f} ms, every event's list is rewritten and the producer kept ≥ {KEPT_RATE:.0%} "
            "of the rate; stepping stops at the first rate that fails. Every process shares the machine's "
            "cores: the CPU rows (core-seconds per 1,000 events) say what each step cost, and their sum "
            "against the cores is the arithmetic of the capacity. Single runs: each step is one "
            "measurement, not a median."
        ),
    )
