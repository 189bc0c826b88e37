"""Freshness (figure 2): from an event's publish to that user's new list in Redis, at a steady rate.

One embedded stack (broker, Redis, one ingest worker, one scorer; no trainer, so no model swap
can happen while measuring) is warmed up: a synthetic stream gives every user a history, one
model is trained and served, and the bench waits until every user's list comes from that model
(so the scorer's re-scoring after the swap is over). Then, per run:

- freshness: a paced producer publishes ``rate`` events/s for ``seconds`` s, cycling over the
  users in a shuffled order (each user gets an event every ``users / rate`` s), and notes each
  event's publish time. Redis keyspace notifications on the ``recs`` keys (no polling) give the
  time each user's list is rewritten; the first rewrite after an event's publish is its update.
  A user whose earlier event has no update yet when the next one is published is ambiguous (which
  event did the rewrite follow?): both events are counted as *overlapped* and that user is left
  out for the rest of the run. Events still without an update when the run is drained are
  reported as *without an update*. Rewrites of users with no event in flight are counted too.
- baseline: the same producer at the same rate for ``baseline_seconds`` on a topic of its own on
  the same broker, read by one consumer with the stack's fetch wait: one produce→consume hop.

Where the time goes comes from timestamps the pipeline writes anyway, read after the run: the
``updated_at`` of the user-features batch that carried the event (validated and folded by
ingest, in one step), against the publish time and the Redis notification (all processes share
one clock). The CPU each process of the stack used during a run is read from /proc.

Sizes: ``BENCH_FRESHNESS_RATE`` (events/s, default 1000), ``BENCH_FRESHNESS_SECONDS`` (default
60), ``BENCH_FRESHNESS_USERS`` (default 10,000), ``BENCH_FRESHNESS_LINGER_MS`` (the producer's
linger, default 50 as the Publisher's); quick mode is tiny. ``BENCH_FRESHNESS_TRACE_DIR`` writes
every matched event's times (published, features built, list written, partition) per run as JSON
lines, to look at a tail closely. Any ``STREAMREC_*`` setting
(e.g. ``STREAMREC_KAFKA_FETCH_WAIT_MS``) applies to the stack, so knobs can be compared.

``BENCH_BROKER`` chooses the broker (``bench/brokers.py``): ``embedded`` (default), ``kafka`` (one
Apache Kafka broker) or ``kafka3`` (three, topics at replication factor 3, min.insync.replicas 2);
each broker's sections go to a fragment of their own (``freshness-kafka3.md``), named in the title.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.brokers import broker, chosen
from bench.freshness.drain import drain
from bench.freshness.measured_run import measure_run
from bench.freshness.report import sections
from bench.freshness.sizes import PARTITIONS, chosen_drain_size, chosen_size
from bench.freshness.warm_up import warm_up
from bench.harness import Section
from bench.stack import running_stack
from streamrec.processes import StackError

__all__ = ["run"]


def run(quick: bool) -> list[Section]:
    """The freshness section: publish → list in Redis, against one produce→consume hop."""
    size = chosen_size(quick)
    drain_size = chosen_drain_size(quick)
    choice = chosen()
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker(Path(tmp), choice) as kafka,
        running_stack(Path(tmp), partitions=PARTITIONS, metrics_port=0, **kafka.overrides) as stack,
    ):
        settings = stack.settings
        users, items, version = warm_up(stack, size)
        warm_up_runs = kafka.choice.warm_up_runs  # measured, then discarded: a JVM broker warms up
        runs = range(warm_up_runs + size.runs)
        results = [measure_run(stack, size, n, users, items, version, kafka) for n in runs][warm_up_runs:]
        drains = [drain(stack, n, users, items, drain_size) for n in range(size.runs)]
    if not all(result.tracker.updated_at for result in results):
        raise StackError("a run saw no list updated at all: is the scorer writing to Redis?")
    return sections(size, drain_size, settings, choice, results, drains, quick)
