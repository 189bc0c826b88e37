"""Ingest throughput per worker: draining a pre-filled topic, against a bare consumer.

Each run starts a fresh embedded broker and Redis, fills ``interactions`` (4 partitions) with
synthetic events, then

- baseline: a bare aiokafka consumer reads the whole topic and JSON-decodes every message;
- ingest: one ``streamrec ingest`` worker (validation, re-key, features with RocksDB tables and
  changelogs, popularity) drains it; its rate is counted on its output (one user-features message
  per accepted event) from the first 1% of the events to the last, so worker start-up is left out.

``BENCH_INGEST_EVENTS`` sets the number of events (default 200,000; quick mode 2,000).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.embedded import start_missing_servers
from streamrec.processes import spawn
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.settings import Settings
from streamrec.synthetic import generate

from .harness import RUNS, Figure, Section

PARTITIONS = 4


async def _bare_consumer_rate(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s of reading and JSON-decoding ``expected`` messages (timed from the first one)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        decoded, started = 0, None
        while decoded < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for messages in batches.values():
                started = started or time.perf_counter()
                for message in messages:
                    orjson.loads(message.value)
                decoded += len(messages)
        return decoded / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()


def _ingest_rate(settings: Settings, run_dir: Path, expected: int) -> float:
    """Events/s of one ingest worker draining the topic (from 1% of the output to all of it)."""
    env = {**os.environ, **settings.as_env(), "STREAMREC_METRICS_PORT": "0", "STREAMREC_LOG_LEVEL": "WARNING"}
    topic = settings.topic_user_features
    output = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench", "fetch.wait.max.ms": 50}
    )
    output.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    worker = spawn("ingest", [sys.executable, "-m", "streamrec", "ingest"], run_dir / "ingest.log", env)
    try:
        count, first = 0, max(1, expected // 100)
        start_count = start_time = None
        deadline = time.monotonic() + 180 + expected / 50
        while count < expected:
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"ingest processed {count}/{expected}; log: {worker.log_tail()}")
            # One bounded read per turn, so the clock sees the output arrive.
            count += sum(1 for message in output.consume(2_000, 0.1) if message.error() is None)
            if start_time is None and count >= first:
                start_count, start_time = count, time.perf_counter()
        assert start_count is not None and start_time is not None
        return (count - start_count) / max(1e-9, time.perf_counter() - start_time)
    finally:
        output.close()
        worker.stop()


def run(quick: bool) -> list[Section]:
    """The ingest section."""
    n_events = 2_000 if quick else int(os.environ.get("BENCH_INGEST_EVENTS", "200000"))
    users = max(100, n_events // 20)
    events = generate(users=users, items=max(200, users // 5), events_per_user=(10, 30), seed=5).head(
        n_events
    )
    ingest_runs, bare_runs = [], []
    for _ in range(1 if quick else RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            servers = start_missing_servers(
                Settings(data_dir=run_dir / "data", partitions=PARTITIONS), run_dir
            )
            try:
                settings = servers.settings
                with Publisher(settings=settings) as publisher:
                    sent = publish_stream(
                        publisher, dataset_events(events, "bench"), len(events), progress=False
                    )
                bare_runs.append(
                    asyncio.run(
                        _bare_consumer_rate(settings.kafka_bootstrap or "", settings.topic_interactions, sent)
                    )
                )
                ingest_runs.append(_ingest_rate(settings, run_dir, sent))
            finally:
                servers.stop()
    return [
        Section(
            "Ingest throughput per worker (figure 1)",
            ("" if quick or n_events == 200_000 else f"BENCH_INGEST_EVENTS={n_events} ")
            + "python -m bench --only ingest"
            + (" --quick" if quick else ""),
            [
                Figure(
                    f"one ingest worker, {n_events:,} events, {PARTITIONS} partitions",
                    "events/s",
                    ingest_runs,
                    "bare aiokafka consumer (JSON decode)",
                    bare_runs,
                    target="≥ 20,000 events/s",
                )
            ],
            description=(
                f"A pre-filled `interactions` topic ({n_events:,} synthetic events over {users:,} users) "
                "drained by one worker with its RocksDB tables and changelogs on, on the embedded broker; "
                "the baseline reads the same topic with a bare aiokafka consumer and only JSON-decodes it."
            ),
        )
    ]
