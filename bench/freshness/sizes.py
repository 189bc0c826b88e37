"""How much the freshness benchmark does: its sizes (from ``BENCH_FRESHNESS_*``) and fixed settings."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.harness import RUNS

PARTITIONS = 4
# What streamrec's Publisher uses (a realistic client), for both measurements; BENCH_FRESHNESS_LINGER_MS
# compares others (the input's record batches are most of the embedded broker's load, figure 8).
PRODUCER_LINGER_MS = int(os.environ.get("BENCH_FRESHNESS_LINGER_MS", "50"))
TRAIN_EPOCHS = 2  # the model must be served, not good: a short training is enough


@dataclass(frozen=True)
class Size:
    """How much one benchmark invocation does."""

    users: int
    rate: float
    seconds: float
    baseline_seconds: float
    runs: int

    @property
    def events(self) -> int:
        """Events published per run."""
        return round(self.rate * self.seconds)


def size_defaults() -> Size:
    """The full size, where no ``BENCH_FRESHNESS_*`` variable changes it."""
    return Size(users=10_000, rate=1000, seconds=60, baseline_seconds=20, runs=RUNS)


def chosen_size(quick: bool) -> Size:
    """The size of this invocation: tiny in quick mode, else the defaults as the variables change them."""
    if quick:
        return Size(users=100, rate=40, seconds=3, baseline_seconds=2, runs=1)
    default = size_defaults()
    seconds = float(os.environ.get("BENCH_FRESHNESS_SECONDS", default.seconds))
    return Size(
        users=int(os.environ.get("BENCH_FRESHNESS_USERS", default.users)),
        rate=float(os.environ.get("BENCH_FRESHNESS_RATE", default.rate)),
        seconds=seconds,
        baseline_seconds=min(seconds, default.baseline_seconds),
        runs=RUNS,
    )


@dataclass(frozen=True)
class DrainSize:
    """The end-to-end drain's burst: ``events`` over ``users`` of the warmed-up users."""

    events: int
    users: int


def chosen_drain_size(quick: bool) -> DrainSize:
    """The drain's burst in this invocation."""
    return DrainSize(600, 30) if quick else DrainSize(60_000, 3_000)
