"""Ingest throughput: one worker against a bare consumer (figure 1), two workers against one (figure 7).

Each run starts a fresh embedded broker and Redis, fills ``interactions`` (4 partitions) with
synthetic events, then

- baseline: a bare aiokafka consumer reads the whole topic and JSON-decodes every message;
- ingest: ``streamrec ingest`` workers (validation, re-key, features with RocksDB tables and
  changelogs, popularity) drain it; the rate is counted on their output (one user-features message
  per accepted event) from the moment every worker is ready and 1% of the output arrived to the
  last event, so start-up is left out.

``BENCH_INGEST_EVENTS`` sets the number of events (default 200,000; quick mode 2,000).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.embedded import start_missing_servers
from streamrec.processes import ChildProcess, spawn
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.kafka_config import aiokafka_config, client_config
from streamrec.shared.settings import Settings
from streamrec.synthetic import generate

from .harness import RUNS, Figure, Section, image_path
from .plots import throughput_bars

PARTITIONS = 4


async def _bare_consumer_rate(settings: Settings, topic: str, expected: int) -> float:
    """Events/s of reading and JSON-decoding ``expected`` messages (timed from the first one)."""
    consumer = AIOKafkaConsumer(
        topic, **aiokafka_config(settings, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=50)
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


def _ingest_rate(settings: Settings, run_dir: Path, expected: int, workers: int = 1) -> float:
    """Events/s of ``workers`` ingest workers draining the topic together.

    Timed from the moment every worker logged that it is ready (joined the group, recovered its
    tables) and 1% of the output arrived, to the last event, so start-up is left out.
    """
    topic = settings.topic_user_features
    output = Consumer(client_config(settings, {"group.id": "bench", "fetch.wait.max.ms": 50}))
    output.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    started = start_workers(settings, run_dir, workers)
    try:
        count, first = 0, max(1, expected // 100)
        start_count = start_time = None
        deadline = time.monotonic() + 180 + expected / 50
        while count < expected:
            if time.monotonic() > deadline or not all(worker.alive() for worker in started):
                tails = "\n".join(worker.log_tail() for worker in started)
                raise RuntimeError(f"ingest processed {count}/{expected}; logs:\n{tails}")
            # One bounded read per turn, so the clock sees the output arrive.
            count += sum(1 for message in output.consume(2_000, 0.1) if message.error() is None)
            if start_time is None and count >= first and all(map(is_ready, started)):
                start_count, start_time = count, time.perf_counter()
        if start_count is None or start_time is None or count - start_count < expected // 2:
            raise RuntimeError(
                f"workers were ready only after {start_count}/{expected} events: run more events"
            )
        return (count - start_count) / max(1e-9, time.perf_counter() - start_time)
    finally:
        output.close()
        for worker in started:
            worker.stop()


def start_workers(settings: Settings, run_dir: Path, workers: int) -> list[ChildProcess]:
    """``workers`` ingest workers of one group, each with its own RocksDB, logging to ``run_dir``."""
    env = {**os.environ, **settings.as_env(), "STREAMREC_METRICS_PORT": "0", "STREAMREC_LOG_LEVEL": "INFO"}
    return [
        spawn(
            f"ingest-{n}",
            [sys.executable, "-m", "streamrec", "ingest"],
            run_dir / f"ingest-{n}.log",
            {**env, "STREAMREC_DATA_DIR": str(settings.data_dir / f"ingest-{n}")},
        )
        for n in range(1, workers + 1)
    ]


def is_ready(worker: ChildProcess) -> bool:
    """True once the worker logged that it joined its group and recovered its tables."""
    return '"msg":"ingest ready"' in worker.log_path.read_text(encoding="utf-8", errors="replace")


def synthetic_events(n_events: int) -> pd.DataFrame:
    """``n_events`` synthetic events, ~20 per user, over a catalogue a fifth the size of the users."""
    users = max(100, n_events // 20)
    return generate(users=users, items=max(200, users // 5), events_per_user=(10, 30), seed=5).head(n_events)


@contextmanager
def filled_broker(events: pd.DataFrame) -> Iterator[tuple[Settings, Path, int]]:
    """A fresh embedded broker and Redis whose ``interactions`` topic holds ``events``."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        servers = start_missing_servers(Settings(data_dir=run_dir / "data", partitions=PARTITIONS), run_dir)
        try:
            with Publisher(settings=servers.settings) as publisher:
                sent = publish_stream(publisher, dataset_events(events, "bench"), len(events), progress=False)
            yield servers.settings, run_dir, sent
        finally:
            servers.stop()


def run(quick: bool) -> list[Section]:
    """The ingest sections: one worker against a bare consumer (figure 1), two workers against one (figure 7)."""
    n_events = 2_000 if quick else int(os.environ.get("BENCH_INGEST_EVENTS", "200000"))
    events = synthetic_events(n_events)
    users = events["user_id"].nunique()
    one_worker, two_workers, bare = [], [], []
    for n in range(1 if quick else RUNS):
        print(f"  ingest run {n + 1}: one worker…", file=sys.stderr, flush=True)
        with filled_broker(events) as (settings, run_dir, sent):
            bare.append(asyncio.run(_bare_consumer_rate(settings, settings.topic_interactions, sent)))
            one_worker.append(_ingest_rate(settings, run_dir, sent))
        print(f"  ingest run {n + 1}: two workers…", file=sys.stderr, flush=True)
        with filled_broker(events) as (settings, run_dir, sent):
            two_workers.append(_ingest_rate(settings, run_dir, sent, workers=2))
    command = (
        ("" if quick or n_events == 200_000 else f"BENCH_INGEST_EVENTS={n_events} ")
        + "python -m bench --only ingest"
        + (" --quick" if quick else "")
    )
    workload = f"{n_events:,} synthetic events over {users:,} users, {PARTITIONS} partitions"
    per_worker = Figure(
        f"one ingest worker, {workload}",
        "events/s",
        one_worker,
        "bare aiokafka consumer (JSON decode)",
        bare,
        target="≥ 20,000 events/s",
    )
    scale_out = Figure(
        f"two ingest workers, {workload}",
        "events/s",
        two_workers,
        "one ingest worker (figure 1's runs)",
        one_worker,
    )
    return [
        Section(
            "Ingest throughput per worker (figure 1)",
            command,
            [per_worker],
            description=(
                f"A pre-filled `interactions` topic ({workload}) drained by one worker with its RocksDB "
                "tables and changelogs on, on the embedded broker; the baseline reads the same topic with "
                "a bare aiokafka consumer and only JSON-decodes it. Where the worker's time goes: the "
                "profile section below."
            ),
            images=[
                throughput_bars(
                    [per_worker],
                    image_path("ingest-throughput.png", quick),
                    title="Ingest throughput per worker",
                )
            ],
        ),
        Section(
            "Ingest scale-out: two workers against one (figure 7)",
            command,
            [scale_out],
            description=(
                "The same pre-filled topic drained by two workers of one group, each with its own "
                "RocksDB, timed from the moment both are ready. All processes (both workers, the broker, "
                "Redis and the benchmark's own consumer) share the machine's cores, so the ratio is what "
                "two workers add on one machine, not on two."
            ),
            images=[
                throughput_bars(
                    [scale_out],
                    image_path("ingest-scale-out.png", quick),
                    title="Two ingest workers against one",
                )
            ],
        ),
    ]
