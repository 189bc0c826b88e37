"""How fast a reader drained a pre-filled topic, timed the same way for every reader: on its output.

The benchmark's own consumer reads the reader's output topic and notes, at every read, how many
events the output carried so far (:class:`DrainClock`). Two rates come from those notes:

- **whole drain**: from the first output to the last (start-up before the first output is left
  out, everything after it is in: a rebalance, a slow start, the last checkpoint);
- **steady part**: between the moments 10% and 90% of the events had come out.

Both readers of figure 1 (``streamrec ingest`` and the Quix Streams app) are timed by this one
class, so their ratio compares like with like.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message

STEADY = (0.10, 0.90)  # the steady part: from 10% of the output to 90%


@dataclass(frozen=True)
class DrainRates:
    """Events/s of one drain: the whole of it, and its steady part."""

    whole: float
    steady: float


@dataclass
class DrainClock:
    """Cumulative output (events) against arrival time, as the benchmark's consumer saw it."""

    expected: int
    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # events out so far, at each of ``times``

    @property
    def last_output(self) -> float | None:
        """When the last output arrived (``time.perf_counter()``), None before the first."""
        return self.times[-1] if self.times else None

    @property
    def count(self) -> int:
        """Events out so far."""
        return self.counts[-1] if self.counts else 0

    def note(self, events: int) -> None:
        """``events`` more came out, now."""
        if events:
            self.times.append(time.perf_counter())
            self.counts.append(self.count + events)

    def _time_at(self, share: float) -> float:
        """When the output first reached ``share`` of the expected events."""
        index = bisect.bisect_left(self.counts, max(1, round(share * self.expected)))
        if index >= len(self.counts):
            raise RuntimeError(f"the output reached {self.count}/{self.expected} events, not {share:.0%}")
        return self.times[index]

    def rates(self) -> DrainRates:
        """The whole drain's rate and its steady part's; RuntimeError if there is nothing to time."""
        if len(self.counts) < 2 or self.count < self.expected:
            raise RuntimeError(f"the output holds {self.count}/{self.expected} events: nothing to time")
        # The first read's events arrived at or before its time: the clock starts there, they are
        # not counted (as a reader timed from its first message does not count that message).
        whole = (self.count - self.counts[0]) / max(1e-9, self.times[-1] - self.times[0])
        low, high = STEADY
        steady_events = round(high * self.expected) - round(low * self.expected)
        steady = steady_events / max(1e-9, self._time_at(high) - self._time_at(low))
        return DrainRates(whole, steady)


def time_output(
    output: Consumer,
    expected: int,
    events_in: Callable[[Message], int],
    stopped: Callable[[DrainClock], str | None],
    deadline: float,
) -> DrainClock:
    """Read ``output`` (already assigned) until ``expected`` events came out; return the clock.

    ``events_in`` counts the events one output message carries; ``stopped`` says why the reader
    can no longer finish, given the clock so far (or None while it can); ``deadline`` is a
    ``time.monotonic()`` limit.
    """
    clock = DrainClock(expected)
    while clock.count < expected:
        if reason := stopped(clock):
            raise RuntimeError(f"{reason} after {clock.count}/{expected} events")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {clock.count}/{expected} events")
        # One bounded read per turn, so that the clock sees the output as it arrives.
        messages = output.consume(2_000, 0.1)
        clock.note(sum(events_in(message) for message in messages if message.error() is None))
    return clock
