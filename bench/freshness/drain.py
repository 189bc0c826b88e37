"""The end-to-end drain (figure 9): a burst published as fast as the Publisher goes, timed to the last
list written in Redis, against publishing the same burst to a topic of its own."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pandas as pd

from bench.freshness.one_hop import BASELINE_TOPIC
from bench.freshness.sizes import PARTITIONS, DrainSize
from bench.harness import log_progress
from bench.progress import PipelineProgress
from bench.stack import create_topic, publish_events, read_lists, wait_until
from streamrec.stack import Stack


@dataclass
class DrainResult:
    """One burst: how fast the stack turned it into lists, and how fast it could be published at all."""

    rate: float  # events/s from the first send to the last list written
    publish_rate: float  # events/s of publishing the same burst to a topic of its own (baseline)


def drain(stack: Stack, run: int, users: list[str], items: list[str], size: DrainSize) -> DrainResult:
    """Publish a burst over ``size.users`` users as fast as the publisher goes; time it to the last list."""
    settings = stack.settings
    pick = random.Random(2000 + run)
    chosen = pick.sample(users, min(size.users, len(users)))
    now = time.time()
    frame = pd.DataFrame(
        {
            "user_id": [chosen[n % len(chosen)] for n in range(size.events)],
            "item_id": [pick.choice(items) for _ in range(size.events)],
            "timestamp": [now + n * 1e-3 for n in range(size.events)],
            "value": float("nan"),
            "event_type": "click",
            "row": range(size.events),  # the event ids' suffix
        }
    )
    progress = PipelineProgress(settings)
    try:
        base_ingested, base_scored = progress.update()
        log_progress(f"  drain {run + 1}: {size.events:,} events over {len(chosen):,} users")
        started = time.time()
        publish_events(settings, frame, f"drain{run}")

        def drained() -> bool:
            ingested, scored = progress.update()
            return ingested - base_ingested >= size.events and scored - base_scored >= size.events

        wait_until(
            stack, drained, "the drain", 600, lambda: f"{progress.ingested - base_ingested:,} ingested"
        )
    finally:
        progress.close()
    # The scorer commits only after writing: once every event is committed, every list is written.
    last_written = max(c.generated_at for c in read_lists(settings, chosen).values())
    topic = BASELINE_TOPIC.format(run=f"drain-{run}")
    create_topic(settings, topic, PARTITIONS)
    publish_started = time.perf_counter()
    publish_events(settings, frame, f"drain-baseline{run}", topic=topic)
    publish_rate = size.events / (time.perf_counter() - publish_started)
    return DrainResult(size.events / max(1e-9, last_written - started), publish_rate)
