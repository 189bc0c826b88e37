"""Where the time goes: each matched event's user-features batch (its ``updated_at``: validated and
folded by ingest), read off the broker after a run, against its publish time and its list's rewrite."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.freshness.sizes import PARTITIONS
from bench.freshness.tracker import UpdateTracker
from bench.harness import log_progress, percentile
from streamrec.shared.kafka_config import client_config
from streamrec.shared.messages import decode_feature_batch
from streamrec.shared.settings import Settings

TRACED_GROUP = "bench-freshness-trace"  # never joined: partitions are assigned by hand


def _traced_topics(settings: Settings) -> list[str]:
    return [settings.topic_user_features]


def topic_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """Where the traced topics end now, so that the trace after a run skips what came before."""
    consumer = Consumer(client_config(settings, {"group.id": TRACED_GROUP}))
    try:
        # Tansu may report less than the log end (see streamrec.shared.topic_admin.MessageCounter): the trace
        # also filters by event id, so starting a little early is harmless.
        return {
            (topic, p): max(0, consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1])
            for topic in _traced_topics(settings)
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def trace(
    settings: Settings, tracker: UpdateTracker, run: int, marks: dict[tuple[str, int], int]
) -> list[tuple[float, float, float]]:
    """For each matched event, ms from its publish to: the user-features batch that carried it
    (its ``updated_at``: validated and folded by ingest), the Redis notification; and its publish
    time (epoch seconds)."""
    prefix = f'"fresh{run}-'.encode()
    built: dict[str, float] = {}
    partition_of: dict[str, int] = {}
    consumer = Consumer(client_config(settings, {"group.id": TRACED_GROUP}))
    try:
        consumer.assign([TopicPartition(topic, p, offset) for (topic, p), offset in marks.items()])
        wanted = len(tracker.updated_at)
        idle_since = time.monotonic()
        while len(built) < wanted and time.monotonic() - idle_since < 5:
            for message in consumer.consume(10_000, 0.5):
                if message.error() is not None or prefix not in message.value():
                    continue
                idle_since = time.monotonic()
                batch = decode_feature_batch(message.value())
                built.update((event.event_id, batch.updated_at) for event in batch.events if event.event_id)
                partition_of.update(
                    (event.event_id, message.partition()) for event in batch.events if event.event_id
                )
    finally:
        consumer.close()
    matched = []
    for event, listed in tracker.updated_at.items():
        if event in built:
            published = tracker.published_at[event]
            matched.append(((built[event] - published) * 1000, (listed - published) * 1000, published))
    if trace_dir := os.environ.get("BENCH_FRESHNESS_TRACE_DIR"):
        # Every matched event's times, to look at a tail closely (not part of the results page).
        rows = (
            {
                "event": e,
                "partition": partition_of[e],
                "published": tracker.published_at[e],
                "built": built[e],
                "listed": t,
            }
            for e, t in tracker.updated_at.items()
            if e in built
        )
        Path(trace_dir, f"run-{run + 1}.jsonl").write_bytes(b"\n".join(map(orjson.dumps, rows)))
    return matched


def log_tail(label: str, matched: list[tuple[float, float, float]], over_ms: float = 500.0) -> None:
    """Log each step's p50/p99 and the seconds of the run holding most events slower than ``over_ms``
    (a tail spread over the run is load; one clustered in a few seconds is a stall)."""
    if not matched:
        return
    steps = {"ingest": [t[0] for t in matched], "scorer": [t[1] - t[0] for t in matched]}
    described = ", ".join(
        f"{name} p50 {percentile(ms, 50):,.0f} / p99 {percentile(ms, 99):,.0f} ms"
        for name, ms in steps.items()
    )
    start = min(t[2] for t in matched)
    slow = Counter(int(t[2] - start) for t in matched if t[1] > over_ms)
    worst = ", ".join(f"s{second}: {count}" for second, count in sorted(slow.most_common(8)))
    began = time.strftime("%H:%M:%S", time.gmtime(start))
    log_progress(
        f"  {label} steps: {described}; events over {over_ms:.0f} ms by second since {began} UTC: "
        f"{worst or 'none'}"
    )
