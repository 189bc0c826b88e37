"""How long an asyncio service's event loop was blocked: a timer that measures its own lateness.

A sleep of ``interval`` that ends ``lag`` seconds late means that, for ``lag`` seconds, no task of
the loop could run: every event in flight waited that long. The lag goes to
``streamrec_event_loop_lag_seconds``; a long one is logged, which tells a stall inside the process
(a slow step, a collection) from a quiet input (the broker, the consumer thread), where the loop
is idle and the lag stays near zero.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

from streamrec.shared.logs import get_logger

log = get_logger(__name__)

EVENT_LOOP_LAG_SECONDS = Histogram(
    "streamrec_event_loop_lag_seconds",
    "How late the event loop ran a timer: the time no task could run.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def watch_event_loop(interval: float = 0.05, log_over_seconds: float = 0.2) -> None:
    """Measure the loop's lateness every ``interval`` seconds, forever; log lags over ``log_over_seconds``."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval)
        lag = time.perf_counter() - started - interval
        EVENT_LOOP_LAG_SECONDS.observe(max(0.0, lag))
        if lag > log_over_seconds:
            log.warning("event loop blocked", extra={"blocked_ms": round(lag * 1000, 1)})
