"""What ingest counts: its Prometheus metrics, and the counters of its periodic log line.

The metrics are served on ``STREAMREC_METRICS_PORT`` (``shared/ops.py``); their names are part of
the contract with dashboards and tests. :class:`IngestCounters` is what this worker did since it
started: every job adds to the one instance ``app.py`` creates, and it is logged every
``COUNTERS_LOG_SECONDS`` ("ingest counters") and once at shutdown ("ingest stopping").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import prometheus_client as prom

from streamrec.shared.logs import get_logger
from streamrec.shared.loop_lag import watch_event_loop

log = get_logger(__name__)

COUNTERS_LOG_SECONDS = 30.0

EVENTS = prom.Counter(
    "streamrec_ingest_events_total", "Events read from the input topic, by outcome.", ["outcome"]
)  # outcome: valid, invalid (dead-lettered), accepted (in the features), duplicate (dropped)
INVALID_EVENTS = prom.Counter(
    "streamrec_ingest_invalid_events_total", "Dead-lettered events, by reason.", ["reason"]
)
INVALID_CATALOG = prom.Counter(
    "streamrec_ingest_invalid_catalog_total", "Dead-lettered catalog messages, by reason.", ["reason"]
)
FEATURE_UPDATE_SECONDS = prom.Histogram(
    "streamrec_ingest_feature_update_seconds",
    "Time to fold one run of events into its users' states and send the new features.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
EVENT_AGE_SECONDS = prom.Histogram(
    "streamrec_ingest_event_age_seconds",
    "From the event's timestamp to its features update (includes Kafka and queueing).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0),
)
# Bound once: ``labels()`` is a dictionary lookup under a lock, too slow for a per-event path.
EVENTS_VALID, EVENTS_INVALID, EVENTS_ACCEPTED, EVENTS_DUPLICATE = (
    EVENTS.labels(outcome) for outcome in ("valid", "invalid", "accepted", "duplicate")
)
EVENTS_ERASED = EVENTS.labels("erased")  # events of a forgotten user stamped before the request: dropped


@dataclass
class IngestCounters:
    """What this worker did since it started (logged periodically and at shutdown)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rekeyed: int = 0
    item_events: int = 0
    popularity_deltas: int = 0
    popular_published: int = 0
    catalog_changes: int = 0
    catalog_rejected: int = 0
    erased: int = 0  # events of forgotten users dropped
    forgotten: int = 0  # forget requests applied (one per partition and request)

    def as_log_fields(self) -> dict[str, Any]:
        """Fields for a structured log line."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "rekeyed": self.rekeyed,
            "item_events": self.item_events,
            "popularity_deltas": self.popularity_deltas,
            "popular_published": self.popular_published,
            "catalog_changes": self.catalog_changes,
            "catalog_rejected": self.catalog_rejected,
            "erased": self.erased,
            "forgotten": self.forgotten,
        }

    async def log_counters(self) -> None:
        """Periodic counters line (the timer ``log_counters``)."""
        log.info("ingest counters", extra=self.as_log_fields())

    async def log_final_counters(self, sender: Any, **kwargs: Any) -> None:
        """The last counters line (connected to the app's ``on_before_shutdown``)."""
        log.info("ingest stopping", extra=self.as_log_fields())


async def watch_loop() -> None:
    """Measure how long the event loop is ever blocked (streamrec_event_loop_lag_seconds).

    A task of its own: ``watch_event_loop`` takes arguments, to which Faust would pass the app."""
    await watch_event_loop()
