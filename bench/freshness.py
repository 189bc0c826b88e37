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

import asyncio
import gc
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.broker_cost import count_record_batches
from bench.brokers import Broker, BrokerChoice, broker, chosen
from bench.harness import RUNS, Figure, Section, image_path, percentile
from bench.plots import latency_cdf
from bench.progress import PipelineProgress
from streamrec.client import decode
from streamrec.processes import StackError
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.cached_list import CachedList
from streamrec.shared.kafka_config import aiokafka_config, client_config
from streamrec.shared.messages import decode_feature_batch
from streamrec.shared.redis_connection import connect, connect_async, get_many
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import accepted_events_counter
from streamrec.stack import Stack
from streamrec.synthetic import generate

PARTITIONS = 4
# What streamrec's Publisher uses (a realistic client), for both measurements; BENCH_FRESHNESS_LINGER_MS
# compares others (the input's record batches are most of the embedded broker's load, figure 8).
PRODUCER_LINGER_MS = int(os.environ.get("BENCH_FRESHNESS_LINGER_MS", "50"))
BASELINE_TOPIC = "bench.one-hop.{run}"  # one per run, read from its start: no earlier run in it
TRAIN_EPOCHS = 2  # the model must be served, not good: a short training is enough
DRAIN_IDLE_SECONDS = 15.0  # after publishing, stop waiting once no update arrived for this long
PROGRESS_SECONDS = 5.0


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


def _size(quick: bool) -> Size:
    if quick:
        return Size(users=100, rate=40, seconds=3, baseline_seconds=2, runs=1)
    default = _size_defaults()
    seconds = float(os.environ.get("BENCH_FRESHNESS_SECONDS", default.seconds))
    return Size(
        users=int(os.environ.get("BENCH_FRESHNESS_USERS", default.users)),
        rate=float(os.environ.get("BENCH_FRESHNESS_RATE", default.rate)),
        seconds=seconds,
        baseline_seconds=min(seconds, default.baseline_seconds),
        runs=RUNS,
    )


def _size_defaults() -> Size:
    return Size(users=10_000, rate=1000, seconds=60, baseline_seconds=20, runs=RUNS)


@dataclass(frozen=True)
class DrainSize:
    """The end-to-end drain's burst: ``events`` over ``users`` of the warmed-up users."""

    events: int
    users: int


def _drain_size(quick: bool) -> DrainSize:
    return DrainSize(600, 30) if quick else DrainSize(60_000, 3_000)


# --- matching events to list updates ------------------------------------------------------------


@dataclass
class UpdateTracker:
    """Matches each published event to the first rewrite of its user's list after it."""

    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # user -> (event id, published)
    published_at: dict[str, float] = field(default_factory=dict)  # event id -> publish time
    updated_at: dict[str, float] = field(default_factory=dict)  # event id -> its update's time
    ambiguous: set[str] = field(default_factory=set)  # users with two events in flight
    overlapped: int = 0  # events of ambiguous users: not measured
    unsolicited: int = 0  # rewrites of users with no event in flight

    def published(self, user: str, event_id: str, at: float) -> None:
        """An event of ``user`` was handed to the producer at ``at``."""
        if user in self.ambiguous:
            self.overlapped += 1
            return
        if user in self.pending:
            # Two events in flight: a later rewrite could follow either one.
            del self.pending[user]
            self.ambiguous.add(user)
            self.overlapped += 2
            return
        self.pending[user] = (event_id, at)
        self.published_at[event_id] = at

    def updated(self, user: str, at: float) -> None:
        """``user``'s list was rewritten; the notification arrived at ``at``."""
        entry = self.pending.pop(user, None)
        if entry is not None:
            self.updated_at[entry[0]] = at
        elif user not in self.ambiguous:
            self.unsolicited += 1

    def latencies_ms(self) -> list[float]:
        """Publish → update of every matched event, in ms."""
        return [(at - self.published_at[event]) * 1000 for event, at in self.updated_at.items()]


# --- the paced producer ---------------------------------------------------------------------------


async def _paced(
    rate: float, count: int, send: Callable[[int], Awaitable[object]], status: Callable[[], str]
) -> float:
    """Call ``send(seq)`` for seq 0..count-1 at ``rate`` per second (a late event is sent at once,
    not skipped: the schedule does not drift); returns the rate achieved."""
    loop = asyncio.get_running_loop()
    started = next_progress = loop.time()
    for seq in range(count):
        delay = started + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(seq)
        if loop.time() >= next_progress:
            next_progress += PROGRESS_SECONDS
            _progress(f"  {seq:,}/{count:,} sent; {status()}")
    return count / max(1e-9, loop.time() - started)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(**aiokafka_config(settings, linger_ms=PRODUCER_LINGER_MS, acks="all"))


# --- one run --------------------------------------------------------------------------------------


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


async def _freshness(
    settings: Settings, size: Size, run: int, users: list[str], items: list[str]
) -> tuple[UpdateTracker, float]:
    """Publish the run's events and follow the lists; returns (tracker, achieved publish rate)."""
    keys = RedisKeys(settings.redis_prefix)
    store = connect_async(settings, socket_timeout=None, connect_timeout=None)
    db = store.connection_pool.connection_kwargs.get("db", 0)
    channel = f"__keyspace@{db}__:{keys.recs('')}"
    previous = (await store.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
    await store.config_set("notify-keyspace-events", "K$")  # keyspace events of string commands
    pubsub = store.pubsub()
    await pubsub.psubscribe(f"{channel}*")
    tracker = UpdateTracker()

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "pmessage" and message["data"] == b"set":
                tracker.updated(message["channel"].decode()[len(channel) :], time.time())

    listener = asyncio.create_task(listen())
    order = random.Random(run).sample(users, len(users))
    pick = random.Random(1000 + run)
    producer = _producer(settings)
    await producer.start()
    try:

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
            await producer.send(settings.topic_interactions, value, key=user.encode())

        rate = await _paced(
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
    finally:
        await producer.stop()
        listener.cancel()
        await pubsub.aclose()
        await store.config_set("notify-keyspace-events", previous)
        await store.aclose()


async def _one_hop(settings: Settings, size: Size, run: int) -> list[float]:
    """Latencies (ms) of the same producer at the same rate, read back by one consumer."""
    topic = BASELINE_TOPIC.format(run=run)
    admin = AdminClient(client_config(settings, {"log_level": 4}))
    # Replicated as streamrec's topics are: on three brokers, one replicated hop.
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, settings.replication_factor)]).values():
        future.result(30)
    consumer = AIOKafkaConsumer(**aiokafka_config(settings, fetch_max_wait_ms=settings.kafka_fetch_wait_ms))
    await consumer.start()
    producer = _producer(settings)
    await producer.start()
    count = round(size.rate * size.baseline_seconds)
    published: list[float] = [0.0] * count
    latencies: list[float] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

        async def read() -> None:
            while len(latencies) < count:
                batches = await consumer.getmany(timeout_ms=500)
                now = time.time()
                for messages in batches.values():
                    latencies.extend((now - published[int(m.value)]) * 1000 for m in messages)

        reader = asyncio.create_task(read())

        async def send(seq: int) -> None:
            published[seq] = time.time()
            await producer.send(topic, str(seq).encode(), key=str(seq % 1000).encode())

        await _paced(size.rate, count, send, lambda: f"{len(latencies):,} read back")
        await producer.flush()
        try:
            await asyncio.wait_for(reader, DRAIN_IDLE_SECONDS)
        except TimeoutError:
            raise StackError(f"one-hop baseline: {len(latencies)}/{count} messages read back") from None
        return latencies
    finally:
        await producer.stop()
        await consumer.stop()


# --- where the time goes --------------------------------------------------------------------------

TRACED_GROUP = "bench-freshness-trace"  # never joined: partitions are assigned by hand


def _traced_topics(settings: Settings) -> list[str]:
    return [settings.topic_user_features]


def _marks(settings: Settings) -> dict[tuple[str, int], int]:
    """Where the traced topics end now, so that the trace after a run skips what came before."""
    consumer = Consumer(client_config(settings, {"group.id": TRACED_GROUP}))
    try:
        # Tansu may report less than the log end (see streamrec.topics.MessageCounter): the trace
        # also filters by event id, so starting a little early is harmless.
        return {
            (topic, p): max(0, consumer.get_watermark_offsets(KafkaPartition(topic, p), 10)[1])
            for topic in _traced_topics(settings)
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def _trace(
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
        consumer.assign([KafkaPartition(topic, p, offset) for (topic, p), offset in marks.items()])
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
    trace = []
    for event, listed in tracker.updated_at.items():
        if event in built:
            published = tracker.published_at[event]
            trace.append(((built[event] - published) * 1000, (listed - published) * 1000, published))
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
    return trace


def _log_tail(label: str, trace: list[tuple[float, float, float]], over_ms: float = 500.0) -> None:
    """Log each step's p50/p99 and the seconds of the run holding most events slower than ``over_ms``
    (a tail spread over the run is load; one clustered in a few seconds is a stall)."""
    if not trace:
        return
    steps = {"ingest": [t[0] for t in trace], "scorer": [t[1] - t[0] for t in trace]}
    described = ", ".join(
        f"{name} p50 {percentile(ms, 50):,.0f} / p99 {percentile(ms, 99):,.0f} ms"
        for name, ms in steps.items()
    )
    start = min(t[2] for t in trace)
    slow = Counter(int(t[2] - start) for t in trace if t[1] > over_ms)
    worst = ", ".join(f"s{second}: {count}" for second, count in sorted(slow.most_common(8)))
    began = time.strftime("%H:%M:%S", time.gmtime(start))
    _progress(
        f"  {label} steps: {described}; events over {over_ms:.0f} ms by second since {began} UTC: "
        f"{worst or 'none'}"
    )


# --- the stack ------------------------------------------------------------------------------------


def _wait(
    stack: Stack, done: Callable[[], bool], status: Callable[[], str], what: str, timeout: float
) -> None:
    """Poll ``done`` (progress on stderr); raise StackError with the services' logs on timeout."""
    deadline = time.monotonic() + timeout
    next_progress = 0.0
    while not done():
        _check_alive(stack)
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not done after {timeout:.0f}s ({status()}){_log_tails(stack)}")
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_SECONDS
            _progress(f"  waiting for {what}: {status()}")
        time.sleep(0.5)


def _check_alive(stack: Stack) -> None:
    # No restarts: a restarted service would re-join its group and re-deliver, blurring the figures.
    dead = [name for name, child in stack.children.items() if not child.alive()]
    if dead:
        raise StackError(f"{', '.join(dead)} exited during the benchmark{_log_tails(stack)}")


def _log_tails(stack: Stack) -> str:
    return "".join(f"\n--- {name} log:\n{child.log_tail()}" for name, child in stack.children.items())


def _lists(settings: Settings, users: list[str]) -> dict[str, tuple[str | None, str]]:
    """User -> (model version, source) of the lists in Redis, through the client's decoding."""
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    keys = RedisKeys(settings.redis_prefix)
    found = {}
    try:
        for start in range(0, len(users), 1000):
            chunk = users[start : start + 1000]
            for user, raw in zip(chunk, get_many(store, [keys.recs(u) for u in chunk]), strict=True):
                if (recs := decode(user, raw, 1, fallback=False)) is not None:
                    found[user] = (recs.model_version, recs.source)
    finally:
        store.close()
    return found


def _served_model(settings: Settings) -> str | None:
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    try:
        value = store.get(RedisKeys(settings.redis_prefix).model)
        return None if value is None else value.decode()
    finally:
        store.close()


def _warm_up(stack: Stack, size: Size) -> tuple[list[str], list[str], str]:
    """Give every user a history, train and serve one model, wait until every list is from it.
    Returns the users, the items the model knows and its version."""
    from streamrec.trainer.service import announce, train_once  # torch: only when this runs

    settings = stack.settings
    events = generate(users=size.users, items=max(200, size.users // 5), events_per_user=(3, 8), seed=11)
    users = sorted(events.user_id.unique())
    counter = accepted_events_counter(settings)
    try:
        _progress(f"  warm-up: {len(events):,} events over {len(users):,} users")
        with Publisher(settings=settings) as publisher:
            sent = publish_stream(publisher, dataset_events(events, "warm-up"), len(events), progress=False)
        _wait(
            stack,
            lambda: counter.update() >= sent,
            lambda: f"{counter.count:,}/{sent:,} events",
            "ingest to take the warm-up events",
            120 + sent / 100,
        )
    finally:
        counter.close()
    _progress(f"  training one model ({TRAIN_EPOCHS} epochs)")
    result = train_once(settings.model_copy(update={"epochs": TRAIN_EPOCHS}))
    manifest = result.manifest
    if not result.promoted:  # the gate judges quality, which this benchmark does not need
        manifest = ModelRegistry(settings.model_dir).promote(manifest.version, "freshness benchmark")  # type: ignore[arg-type]
        announce(settings, manifest)
    version = manifest.version

    def served() -> int:
        return sum(1 for v, _ in _lists(settings, users).values() if v == version)

    # Every user's list from this model also means the scorer's re-scoring after the swap is over.
    _wait(
        stack,
        lambda: served() == len(users),
        lambda: f"{served():,}/{len(users):,}",
        "lists from the model",
        120 + len(users) / 100,
    )
    items = ModelRegistry(settings.model_dir).vocabulary(version)  # type: ignore[arg-type]
    return users, items, version


def _run_once(
    stack: Stack, size: Size, run: int, users: list[str], items: list[str], version: str, kafka: Broker
) -> RunResult:
    settings = stack.settings
    marks = _marks(settings)
    written_before = _written(settings)
    warm_up = kafka.choice.warm_up_runs
    label = f"warm-up run {run + 1}/{warm_up}" if run < warm_up else f"run {run - warm_up + 1}/{size.runs}"
    _progress(f"  {label}: {size.events:,} events at {size.rate:,.0f}/s")
    pids = {name: child.pid for name, child in stack.processes().items()} | kafka.pids()
    brokers = [name for name in pids if name == "broker" or name.startswith("kafka-")]
    pids["benchmark (producer, Redis listener)"] = os.getpid()  # it shares the cores too
    cpu_before, started = {name: _cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    stolen_before = _stolen_seconds()
    with _no_gc_pauses():
        tracker, rate = asyncio.run(_freshness(settings, size, run, users, items))
    elapsed = time.monotonic() - started
    stolen = 100 * (_stolen_seconds() - stolen_before) / elapsed if stolen_before >= 0 else 0.0
    cpu_used = {
        name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items() if cpu_before[name] >= 0
    }
    written_after = _written(settings)
    per_topic = {
        topic: after[0] - written_before.get(topic, (0, 0))[0] for topic, after in written_after.items()
    }
    latencies = tracker.latencies_ms()
    if latencies:
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        _progress(
            f"  {label}: publish -> list p50 {p50:,.0f} ms, p99 {p99:,.0f} ms "
            f"(the host stole {stolen:.0f}% of a core)"
        )
    _progress(f"  record batches written during the run, per topic: {per_topic}")
    _check_alive(stack)
    if (served := _served_model(settings)) != version:
        raise StackError(f"the served model changed during the run ({version} -> {served}): figures void")
    lists = _lists(settings, users)
    personal = sum(1 for v, source in lists.values() if source == "personal" and v == version)
    _progress(f"  one-hop baseline: {size.baseline_seconds:.0f}s at {size.rate:,.0f}/s")
    broker_before = sum(_cpu_seconds(pids[name]) for name in brokers)
    with _no_gc_pauses():
        baseline = asyncio.run(_one_hop(settings, size, run))
    baseline_broker = sum(_cpu_seconds(pids[name]) for name in brokers) - broker_before
    trace = _trace(settings, tracker, run, marks)
    _log_tail(label, trace)
    return RunResult(
        tracker=tracker,
        publish_rate=rate,
        baseline_ms=baseline,
        trace=trace,
        personal_share=100 * personal / len(users),
        cpu={name: 100 * seconds / elapsed for name, seconds in cpu_used.items()},
        stolen_cpu=stolen,
        broker_cpu_seconds=sum(cpu_used.get(name, 0.0) for name in brokers),
        written=_delta(written_before, written_after, lambda topic: topic != settings.topic_interactions),
        input_written=_delta(
            written_before, written_after, lambda topic: topic == settings.topic_interactions
        ),
        baseline_broker_cpu_seconds=baseline_broker,
        baseline_events=round(size.rate * size.baseline_seconds),
    )


# --- what the pipeline writes to the broker -----------------------------------------------------


def _written(settings: Settings) -> dict[str, tuple[int, int]]:
    """(record batches, records) of every topic but the benchmark's own, from their beginnings."""
    admin = AdminClient(client_config(settings, {"log_level": 4}))
    # Not the broker's internal topics either (Apache Kafka lists __consumer_offsets; the embedded
    # broker does not): the figures compare what streamrec's services write on either broker.
    topics = [name for name in admin.list_topics(timeout=30).topics if not name.startswith(("bench.", "__"))]
    del admin
    return count_record_batches(settings, topics)


def _delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], keep: Callable[[str], bool]
) -> tuple[int, int]:
    """Batches and records added between two counts, summed over the topics ``keep`` selects."""
    batches = records = 0
    for topic, (after_batches, after_records) in after.items():
        if keep(topic):
            before_batches, before_records = before.get(topic, (0, 0))
            batches += after_batches - before_batches
            records += after_records - before_records
    return batches, records


# --- end-to-end drain -----------------------------------------------------------------------------


@dataclass
class DrainResult:
    """One burst: how fast the stack turned it into lists, and how fast it could be published at all."""

    rate: float  # events/s from the first send to the last list written
    publish_rate: float  # events/s of publishing the same burst to a topic of its own (baseline)


def _drain(stack: Stack, run: int, users: list[str], items: list[str], size: DrainSize) -> DrainResult:
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
        _progress(f"  drain {run + 1}: {size.events:,} events over {len(chosen):,} users")
        started = time.time()
        with Publisher(settings=settings) as publisher:
            publish_stream(publisher, dataset_events(frame, f"drain{run}"), size.events, progress=False)

        def drained() -> bool:
            ingested, scored = progress.update()
            return ingested - base_ingested >= size.events and scored - base_scored >= size.events

        _wait(stack, drained, lambda: f"{progress.ingested - base_ingested:,} ingested", "the drain", 600)
    finally:
        progress.close()
    # The scorer commits only after writing: once every event is committed, every list is written.
    last_written = max(_generated_at(settings, chosen))
    topic = BASELINE_TOPIC.format(run=f"drain-{run}")
    admin = AdminClient(client_config(settings, {"log_level": 4}))
    admin.create_topics([NewTopic(topic, PARTITIONS, settings.replication_factor)])[topic].result(30)
    del admin
    publish_started = time.perf_counter()
    with Publisher(settings=settings, topic=topic) as publisher:
        publish_stream(publisher, dataset_events(frame, f"drain-baseline{run}"), size.events, progress=False)
    publish_rate = size.events / (time.perf_counter() - publish_started)
    return DrainResult(size.events / max(1e-9, last_written - started), publish_rate)


def _generated_at(settings: Settings, users: list[str]) -> list[float]:
    """When each user's list in Redis was generated (epoch seconds)."""
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    keys = RedisKeys(settings.redis_prefix)
    try:
        raws = get_many(store, [keys.recs(user) for user in users])
    finally:
        store.close()
    return [CachedList.decode(raw).generated_at for raw in raws if raw is not None]


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
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


def _stolen_seconds() -> float:
    """CPU time the hypervisor gave other guests while this machine's CPUs wanted to run, summed over
    its CPUs (the ``steal`` column of /proc/stat); -1 where there is no /proc. A shared host that
    steals a good part of the cores makes every latency here worse: the figure says when it did."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return -1.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, from /proc; -1 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    # Fields 14 and 15 of proc(5) (utime, stime), counted after the ")" that ends the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the section ----------------------------------------------------------------------------------


def run(quick: bool) -> list[Section]:
    """The freshness section: publish → list in Redis, against one produce→consume hop."""
    size = _size(quick)
    choice = chosen()
    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp), choice) as kafka:
        run_dir = Path(tmp)
        requested = Settings(
            data_dir=run_dir / "data",
            partitions=PARTITIONS,
            metrics_port=0,
            log_level="WARNING",
            **kafka.overrides,
        )
        stack = Stack(requested, run_dir, ("ingest", "scorer")).start()
        try:
            settings = stack.settings
            users, items, version = _warm_up(stack, size)
            warm_up = kafka.choice.warm_up_runs  # measured, then discarded: a JVM broker warms up
            runs = range(warm_up + size.runs)
            results = [_run_once(stack, size, n, users, items, version, kafka) for n in runs][warm_up:]
            drain_size = _drain_size(quick)
            drains = [_drain(stack, n, users, items, drain_size) for n in range(size.runs)]
        finally:
            stack.stop()
    if not all(result.tracker.updated_at for result in results):
        raise StackError("a run saw no list updated at all: is the scorer writing to Redis?")
    images = [
        latency_cdf(
            {
                "one produce→consume hop (baseline)": [ms for r in results for ms in r.baseline_ms],
                "publish → features built": [t[0] for r in results for t in r.trace],
                "publish → list in Redis": [ms for r in results for ms in r.tracker.latencies_ms()],
            },
            image_path(f"{choice.fragment('freshness-cdf')}.png", quick),
            title=f"Freshness at {size.rate:,.0f} events/s, {size.runs} runs pooled ({choice.label})",
        )
    ]
    command = choice.env + _command(size, quick)
    on = "" if choice.embedded else f" — {choice.label}"
    return [
        Section(
            f"Freshness (figure 2){on}",
            command,
            _figures(size, results),
            description=_description(size, settings, choice),
            images=images,
        ),
        Section(
            f"Broker cost per event (figure 8){on}",
            command,
            _broker_figures(size, results),
            description=(
                "Measured during figure 2's runs: the record batches and records streamrec's services "
                "wrote to the broker per event published (every topic but the input, changelogs "
                "included; counted by reading each partition's raw fetch responses before and after a "
                "run, `bench/broker_cost.py`), and the broker's CPU time per 1,000 events. The "
                "baseline for batches is what the benchmark's own producer wrote to the input topic "
                f"(linger {PRODUCER_LINGER_MS} ms); for CPU, the one-hop baseline (the same producer at "
                "the same rate, one consumer, nothing else). The embedded broker's request cost grows "
                "with the record batches a partition holds (`python -m bench --only broker`)."
            ),
        ),
        Section(
            f"End-to-end drain (figure 9){on}",
            command,
            _drain_figures(drains, drain_size),
            description=(
                f"On figure 2's stack after its runs (model served): a burst of {drain_size.events:,} "
                f"events over {drain_size.users:,} users, published with `streamrec`'s Publisher as fast "
                "as it goes, timed from the first send to the last list written in Redis (the latest "
                "`generated_at` of those users' lists once the scorer committed every event). The "
                "baseline publishes the same burst to a topic of its own: how fast the events can be "
                "sent at all."
            ),
        ),
    ]


def _broker_figures(size: Size, results: list[RunResult]) -> list[Figure]:
    events = [size.events for _ in results]
    per_event = [r.written[0] / n for r, n in zip(results, events, strict=True)]
    input_per_event = [r.input_written[0] / n for r, n in zip(results, events, strict=True)]
    cpu = [1000 * r.broker_cpu_seconds / n for r, n in zip(results, events, strict=True)]
    baseline_cpu = [1000 * r.baseline_broker_cpu_seconds / r.baseline_events for r in results]
    return [
        Figure(
            "record batches streamrec writes per event",
            "batches",
            per_event,
            "the producer's batches on the input topic, per event",
            input_per_event,
            target="≤ 0.1",
        ),
        Figure(
            "messages streamrec writes per event",
            "messages",
            [r.written[1] / n for r, n in zip(results, events, strict=True)],
        ),
        Figure(
            "broker CPU per 1,000 events",
            "core-seconds",
            cpu,
            "one produce→consume hop, per 1,000 events",
            baseline_cpu,
            target="≤ 0.5",
        ),
    ]


def _drain_figures(drains: list[DrainResult], size: DrainSize) -> list[Figure]:
    return [
        Figure(
            f"burst of {size.events:,} events over {size.users:,} users → lists in Redis",
            "events/s",
            [d.rate for d in drains],
            "publishing the burst alone",
            [d.publish_rate for d in drains],
            target="≥ 5,000 events/s",
        )
    ]


def _figures(size: Size, results: list[RunResult]) -> list[Figure]:
    fresh = [r.tracker.latencies_ms() for r in results]
    base = [r.baseline_ms for r in results]
    targets: dict[float, str] = {50: "≤ 150 ms", 99: "≤ 500 ms"}
    figures = [
        Figure(
            f"publish → list in Redis, p{q}",
            "ms",
            [percentile(run, q) for run in fresh],
            "one produce→consume hop",
            [percentile(run, q) for run in base],
            target=targets.get(q, ""),
        )
        for q in (50, 99, 99.9)
    ]
    steps = ("publish → features built by ingest", "features built → list in Redis")
    for step, name in enumerate(steps):
        per_run = [[t[step] - (t[step - 1] if step else 0.0) for t in r.trace] for r in results]
        for q in (50, 99):
            figures.append(
                Figure(f"{name}, p{q}", "ms", [percentile(run, q) if run else 0.0 for run in per_run])
            )
    counts = [
        ("events measured per run", [len(r.tracker.updated_at) for r in results], ""),
        ("events without an update", [r.missing for r in results], "0"),
        (
            "events not measured: their user had another one in flight",
            [r.tracker.overlapped for r in results],
            "0",
        ),
        ("list rewrites with no event in flight", [r.tracker.unsolicited for r in results], "0"),
    ]
    figures += [
        Figure(name, "events", [float(v) for v in values], target=target) for name, values, target in counts
    ]
    figures += [
        Figure(
            "producer rate achieved",
            "events/s",
            [r.publish_rate for r in results],
            target=f"{size.rate:,.0f} events/s",
        ),
        Figure(
            "lists from the served model after the run",
            "%",
            [r.personal_share for r in results],
            target="100 %",
        ),
    ]
    figures += [
        Figure(f"CPU of {name} while publishing", "% of a core", [r.cpu[name] for r in results])
        for name in results[0].cpu
    ]
    figures.append(
        Figure(
            "CPU the host stole (other guests) while publishing",
            "% of a core",
            [r.stolen_cpu for r in results],
        )
    )
    return figures


def _command(size: Size, quick: bool) -> str:
    if quick:
        return "python -m bench --only freshness --quick"
    default = _size_defaults()
    env = [
        f"{variable}={value:g}"
        for variable, value, base in (
            ("BENCH_FRESHNESS_RATE", size.rate, default.rate),
            ("BENCH_FRESHNESS_SECONDS", size.seconds, default.seconds),
            ("BENCH_FRESHNESS_USERS", size.users, default.users),
            ("BENCH_FRESHNESS_LINGER_MS", PRODUCER_LINGER_MS, 50),
        )
        if value != base
    ]
    knobs = [f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("STREAMREC_")]
    return " ".join([*env, *knobs, "python -m bench --only freshness"])


def _description(size: Size, settings: Settings, choice: BrokerChoice) -> str:
    broker_label = choice.label
    warm_up = (
        f" Before the measured runs, {choice.warm_up_runs} runs the same are made and discarded: a JVM "
        "broker compiles its hot paths as it runs (`bench/brokers.py`)."
        if choice.warm_up_runs
        else ""
    )
    replicated = (
        f", topics at replication factor {settings.replication_factor} (min.insync.replicas 2)"
        if settings.replication_factor > 1
        else ""
    )
    return (
        f"{size.runs} run{'s' if size.runs > 1 else ''} on one stack ({broker_label}{replicated}, embedded "
        f"Redis, one ingest worker, one scorer, {PARTITIONS} partitions). Warm-up: a synthetic stream over {size.users:,} users, one SASRec model "
        f"trained ({TRAIN_EPOCHS} epochs) and served, every list from it.{warm_up} Each run publishes {size.events:,} "
        f"events at {size.rate:,.0f}/s ({size.seconds:g} s), cycling over the users (one event per user every "
        f"{size.users / size.rate:g} s), with a paced aiokafka producer (linger {PRODUCER_LINGER_MS} ms), and "
        "times each user's next list rewrite from Redis keyspace notifications. The baseline is the same "
        f"producer at the same rate for {size.baseline_seconds:g} s on a topic of its own, read by one consumer "
        "with the stack's fetch wait. The per-step rows come from the pipeline's own timestamps (`updated_at` "
        "of the user-features batch that carried the event). Knobs: "
        f"`STREAMREC_KAFKA_FETCH_WAIT_MS={settings.kafka_fetch_wait_ms}`, "
        f"`STREAMREC_SCORER_BATCH_SIZE={settings.scorer_batch_size}`, "
        f"`STREAMREC_SCORER_BATCH_WAIT_MS={settings.scorer_batch_wait_ms}`; what each costs is in "
        "[latency-tuning.md](latency-tuning.md)."
    )
