"""One measured run of figure 2: publish the run's events at a steady rate, follow the users' lists in
Redis, then the one-hop baseline, the trace and the counts of what the pipeline wrote."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson

from bench.brokers import Broker
from bench.freshness.broker_writes import record_batches_written, written_between
from bench.freshness.list_rewrites import ListRewrites
from bench.freshness.load import DRAIN_IDLE_SECONDS, new_producer, paced
from bench.freshness.one_hop import one_hop
from bench.freshness.sizes import Size
from bench.freshness.trace import log_tail, topic_ends, trace
from bench.freshness.tracker import UpdateTracker
from bench.harness import log_progress, percentile
from bench.procfs import cpu_seconds, stolen_seconds
from bench.stack import check_alive, read_lists, served_model
from streamrec.processes import StackError
from streamrec.shared.settings import Settings
from streamrec.stack import Stack


@dataclass
class RunResult:
    """What one run measured."""

    tracker: UpdateTracker
    publish_rate: float  # events/s the producer achieved
    baseline_ms: list[float]  # one produce→consume hop per message
    trace: list[tuple[float, float, float]]  # per matched event: ms to features built, to list; published at
    personal_share: float  # % of the users whose list comes from the served model
    cpu: dict[str, float]  # process name -> % of one core while the run's events were published
    stolen_cpu: float  # % of one core the host gave other guests meanwhile (all CPUs summed)
    broker_cpu_seconds: float  # the broker's CPU time over the run
    written: tuple[int, int]  # (record batches, records) streamrec's services wrote during the run
    input_written: tuple[int, int]  # the same on the input topic (the benchmark's producer)
    baseline_broker_cpu_seconds: float  # the broker's CPU time over the one-hop baseline
    baseline_events: int  # events the one-hop baseline published

    @property
    def missing(self) -> int:
        """Events (of unambiguous users) whose list was never rewritten."""
        return len(self.tracker.pending)


async def follow_lists(
    settings: Settings, size: Size, run: int, users: list[str], items: list[str]
) -> tuple[UpdateTracker, float]:
    """Publish the run's events and follow the lists; returns (tracker, achieved publish rate)."""
    tracker = UpdateTracker()
    order = random.Random(run).sample(users, len(users))
    pick = random.Random(1000 + run)

    async def send(seq: int) -> None:
        user, event_id = order[seq % len(order)], f"fresh{run}-{seq}"
        event = {
            "user_id": user,
            "item_id": pick.choice(items),
            "event_type": "click",
            "event_id": event_id,
        }
        value = orjson.dumps(event)
        tracker.published(user, event_id, time.time())
        producer.send(settings.topic_interactions, value, key=user.encode())

    async with ListRewrites(settings, tracker.updated):
        producer = new_producer(settings)
        rate = await paced(
            size.rate,
            size.events,
            send,
            lambda: f"{len(tracker.updated_at):,} lists updated, {len(tracker.pending):,} in flight",
        )
        await producer.flush()
        # Drain: wait while updates keep coming, then give up on what is left (reported).
        last, idle_since = len(tracker.updated_at), time.monotonic()
        while tracker.pending and time.monotonic() - idle_since < DRAIN_IDLE_SECONDS:
            await asyncio.sleep(0.2)
            if len(tracker.updated_at) != last:
                last, idle_since = len(tracker.updated_at), time.monotonic()
    return tracker, rate


@contextmanager
def no_gc_pauses() -> Iterator[None]:
    """No garbage collection in this process while it measures: its own records of 60,000 events
    made full collections of 50-100 ms, which stopped the producer and the Redis listener and
    showed up as the pipeline's latency. The measured services are not affected."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def measure_run(
    stack: Stack, size: Size, run: int, users: list[str], items: list[str], version: str, kafka: Broker
) -> RunResult:
    """One run (warm-up runs first, counted apart): the paced events followed to their lists, the CPU
    each process used meanwhile, then the one-hop baseline and where the time went."""
    # Over 80 lines: the run's steps share the before/after readings they compare.
    settings = stack.settings
    marks = topic_ends(settings)
    written_before = record_batches_written(settings)
    warm_up = kafka.choice.warm_up_runs
    label = f"warm-up run {run + 1}/{warm_up}" if run < warm_up else f"run {run - warm_up + 1}/{size.runs}"
    log_progress(f"  {label}: {size.events:,} events at {size.rate:,.0f}/s")
    pids = {name: child.pid for name, child in stack.processes().items()} | kafka.pids()
    brokers = [name for name in pids if name == "broker" or name.startswith("kafka-")]
    pids["benchmark (producer, Redis listener)"] = os.getpid()  # it shares the cores too
    cpu_before, started = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    stolen_before = stolen_seconds()
    with no_gc_pauses():
        tracker, rate = asyncio.run(follow_lists(settings, size, run, users, items))
    elapsed = time.monotonic() - started
    stolen = 100 * (stolen_seconds() - stolen_before) / elapsed if stolen_before >= 0 else 0.0
    cpu_used = {
        name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items() if cpu_before[name] >= 0
    }
    written_after = record_batches_written(settings)
    per_topic = {
        topic: after[0] - written_before.get(topic, (0, 0))[0] for topic, after in written_after.items()
    }
    latencies = tracker.latencies_ms()
    if latencies:
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        log_progress(
            f"  {label}: publish -> list p50 {p50:,.0f} ms, p99 {p99:,.0f} ms "
            f"(the host stole {stolen:.0f}% of a core)"
        )
    log_progress(f"  record batches written during the run, per topic: {per_topic}")
    check_alive(stack)
    if (served := served_model(settings)) != version:
        raise StackError(f"the served model changed during the run ({version} -> {served}): figures void")
    lists = read_lists(settings, users)
    personal = sum(1 for c in lists.values() if c.source == "personal" and c.model_version == version)
    log_progress(f"  one-hop baseline: {size.baseline_seconds:.0f}s at {size.rate:,.0f}/s")
    broker_before = sum(cpu_seconds(pids[name]) for name in brokers)
    with no_gc_pauses():
        baseline = asyncio.run(one_hop(settings, size, run))
    baseline_broker = sum(cpu_seconds(pids[name]) for name in brokers) - broker_before
    matched = trace(settings, tracker, run, marks)
    log_tail(label, matched)
    return RunResult(
        tracker=tracker,
        publish_rate=rate,
        baseline_ms=baseline,
        trace=matched,
        personal_share=100 * personal / len(users),
        cpu={name: 100 * seconds / elapsed for name, seconds in cpu_used.items()},
        stolen_cpu=stolen,
        broker_cpu_seconds=sum(cpu_used.get(name, 0.0) for name in brokers),
        written=written_between(
            written_before, written_after, lambda topic: topic != settings.topic_interactions
        ),
        input_written=written_between(
            written_before, written_after, lambda topic: topic == settings.topic_interactions
        ),
        baseline_broker_cpu_seconds=baseline_broker,
        baseline_events=round(size.rate * size.baseline_seconds),
    )
