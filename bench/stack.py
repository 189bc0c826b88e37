"""The stack helpers every benchmark shares: start the servers and services, feed them events, wait
until they are live, train one model and serve it, stop.

A stream benchmark runs the embedded stack (broker and Redis where no URL is set, plus
``streamrec ingest`` and ``streamrec scorer`` as real processes) with :func:`running_stack`; an
ingest benchmark drains a :func:`filled_broker` with workers it starts itself
(:func:`start_ingest_workers`); a read benchmark runs only Redis (:func:`embedded_redis`) and the
HTTP API (:func:`api_process`).
No service is restarted while a benchmark runs: a restarted service re-joins its group, re-delivers
and starts its memory over, which would blur the figures, so :func:`check_alive` fails instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka.admin import AdminClient, NewTopic

from bench.brokers import CHOICES, BrokerChoice, broker
from bench.harness import PROGRESS_SECONDS, log_progress
from bench.progress import PipelineProgress
from streamrec.embedded import start_missing_servers, start_redis
from streamrec.processes import ChildProcess, StackError, spawn, wait_for_port
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.cached_list import CachedList
from streamrec.shared.kafka_config import client_config
from streamrec.shared.redis_connection import connect, get_many
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import create_topics, existing_topics
from streamrec.stack import Stack

STREAM_SERVICES = ("ingest", "scorer")  # no trainer: no model swap can happen while measuring
POLL_SECONDS = 0.5
SERVE_TIMEOUT_SECONDS = 300.0


@contextmanager
def running_stack(run_dir: Path, **settings: Any) -> Iterator[Stack]:
    """The embedded stack with one ingest worker and one scorer, on ``Settings(**settings)`` with its
    data under ``run_dir`` and warnings only in the logs; stopped on exit."""
    requested = Settings(data_dir=run_dir / "data", log_level="WARNING", **settings)
    stack = Stack(requested, run_dir, STREAM_SERVICES).start()
    try:
        yield stack
    finally:
        stack.stop()


def check_alive(stack: Stack) -> None:
    """Raise StackError, with the logs, if a process of the stack exited (none is restarted)."""
    dead = [name for name, child in stack.processes().items() if not child.alive()]
    if dead:
        raise StackError(f"{', '.join(dead)} exited during the benchmark{log_tails(stack)}")


def log_tails(stack: Stack) -> str:
    """The last lines of every process's log, for an error message."""
    return "".join(f"\n--- {name} log:\n{child.log_tail()}" for name, child in stack.processes().items())


def wait_until(
    stack: Stack,
    done: Callable[[], bool],
    what: str,
    timeout: float,
    status: Callable[[], str] | None = None,
) -> None:
    """Poll ``done`` while the stack lives (progress on stderr if ``status`` says how far it got);
    raise StackError with the logs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    next_progress = 0.0
    while not done():
        check_alive(stack)
        if time.monotonic() > deadline:
            state = f" ({status()})" if status is not None else ""
            raise StackError(f"{what}: not done after {timeout:.0f}s{state}{log_tails(stack)}")
        if status is not None and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_SECONDS
            log_progress(f"  waiting for {what}: {status()}")
        time.sleep(POLL_SECONDS)


def publish_events(settings: Settings, events: pd.DataFrame, source: str, topic: str | None = None) -> int:
    """Send ``events`` with streamrec's Publisher (event ids ``source`` + row) to the interactions
    topic, or to ``topic``; returns the events sent."""
    with Publisher(settings=settings, topic=topic) as publisher:
        return publish_stream(publisher, dataset_events(events, source), len(events), progress=False)


def feed(
    stack: Stack, events: pd.DataFrame, source: str, timeout: float, through_scorer: bool = False
) -> int:
    """Publish ``events`` (see :func:`publish_events`) and wait until ingest accepted every one, and
    with ``through_scorer`` until the scorer committed them too, ``timeout`` seconds for each;
    returns the events sent."""
    progress = PipelineProgress(stack.settings)
    try:
        sent = publish_events(stack.settings, events, source)
        wait_until(
            stack,
            lambda: progress.update()[0] >= sent,
            f"ingest to accept {sent:,} events",
            timeout,
            lambda: f"{progress.ingested:,}/{sent:,} events",
        )
        if through_scorer:
            wait_until(
                stack, lambda: progress.update()[1] >= sent, f"the scorer to process {sent:,} events", timeout
            )
        return sent
    finally:
        progress.close()


TOPIC_SEEN_TIMES = 3  # a new topic counts as known once this many metadata answers in a row list it


def create_topic(settings: Settings, topic: str, partitions: int) -> None:
    """Create a benchmark's own topic, replicated as streamrec's topics are, and wait until the
    brokers' metadata lists it: on three brokers one could still answer without it (a Publisher
    then refused the topic as missing)."""
    admin = AdminClient(client_config(settings, {"log_level": 4}))
    for future in admin.create_topics([NewTopic(topic, partitions, settings.replication_factor)]).values():
        future.result(30)
    seen, deadline = 0, time.monotonic() + 30
    while seen < TOPIC_SEEN_TIMES:
        seen = seen + 1 if topic in existing_topics(settings) else 0
        time.sleep(0.1)  # each check is a new client's metadata request: a few a second suffice
        if time.monotonic() > deadline:
            raise StackError(f"topic {topic} created but not listed by the brokers within 30 s")


def served_model(settings: Settings) -> str | None:
    """The model version the scorer serves (its key in Redis), or None."""
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    try:
        value = store.get(RedisKeys(settings.redis_prefix).model)
        return None if value is None else value.decode()
    finally:
        store.close()


def read_lists(settings: Settings, users: list[str]) -> dict[str, CachedList]:
    """User -> the list the scorer wrote for them in Redis (users without one left out), read in
    chunks of 1,000 keys."""
    keys = RedisKeys(settings.redis_prefix)
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    found = {}
    try:
        for start in range(0, len(users), 1000):
            chunk = users[start : start + 1000]
            for user, raw in zip(chunk, get_many(store, [keys.recs(u) for u in chunk]), strict=True):
                if raw is not None:
                    found[user] = CachedList.decode(raw)
    finally:
        store.close()
    return found


def serve_model(stack: Stack, version: str, reason: str) -> None:
    """Promote ``version`` if the quality gate did not (a benchmark needs a served model, not a good
    one) and announce it; wait until the scorer serves it."""
    from streamrec.trainer.service import announce  # torch: only when a benchmark trains

    settings = stack.settings
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
    if registry.promoted_version() != version:
        announce(settings, registry.promote(version, reason))
    wait_until(
        stack,
        lambda: served_model(settings) == version,
        f"the scorer to serve model {version}",
        SERVE_TIMEOUT_SECONDS,
    )


def train_and_serve(stack: Stack, epochs: int, reason: str) -> str:
    """Train one model in this process on what the stack has ingested (``epochs`` epochs: it must be
    served, not good), serve it; returns its version."""
    from streamrec.trainer.service import train_once  # torch: only when a benchmark trains

    log_progress(f"  training one model ({epochs} epochs)")
    result = train_once(stack.settings.model_copy(update={"epochs": epochs}))
    version = result.manifest.version
    serve_model(stack, version, reason)
    return version


@contextmanager
def filled_broker(
    events: pd.DataFrame, partitions: int, choice: BrokerChoice | None = None
) -> Iterator[tuple[Settings, Path, int]]:
    """A fresh broker (the embedded one unless ``choice`` names Apache Kafka) and Redis, no services,
    whose ``interactions`` topic, of ``partitions`` partitions, holds ``events``: yields the
    settings, the run folder and the events sent.

    Every streamrec topic exists before the yield: a benchmark's consumer assigned to a topic the
    service has yet to create (``user_features``) would learn of it only at a later metadata refresh,
    and then read the whole output in one go, with nothing left to time."""
    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp), choice or CHOICES["embedded"]) as kafka:
        run_dir = Path(tmp)
        settings = Settings(data_dir=run_dir / "data", partitions=partitions, **kafka.overrides)
        servers = start_missing_servers(settings, run_dir)
        try:
            create_topics(servers.settings)
            sent = publish_events(servers.settings, events, "bench")
            yield servers.settings, run_dir, sent
        finally:
            servers.stop()


def start_ingest_workers(settings: Settings, run_dir: Path, workers: int) -> list[ChildProcess]:
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


def ingest_ready(worker: ChildProcess) -> bool:
    """True once the worker logged that it joined its group and recovered its tables."""
    return '"msg":"ingest ready"' in worker.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def embedded_redis(run_dir: Path) -> Iterator[str]:
    """A redis-server of its own (the embedded one); yields its URL, stopped on exit."""
    redis_process, url = start_redis(run_dir)
    try:
        yield url
    finally:
        redis_process.stop()


@contextmanager
def api_process(settings: Settings, run_dir: Path) -> Iterator[ChildProcess]:
    """``streamrec api`` on ``settings``, waited for until it listens; stopped on exit."""
    env = {**os.environ, **settings.as_env()}
    api = spawn("api", [sys.executable, "-m", "streamrec", "api"], run_dir / "api.log", env)
    try:
        wait_for_port(settings.api_host, settings.api_port, 60, api)
        yield api
    finally:
        api.stop()
