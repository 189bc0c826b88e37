"""Baselines of the ingest benchmark (figure 1): how fast other readers drain a pre-filled topic.

Each function takes ``(settings, topic, expected)`` for a topic that already holds ``expected``
messages. The first two return events/s, timed from the first message received to the
``expected``-th, so connecting, joining a group and creating topics are left out; the Quix app's
rates (whole drain and steady part) are timed on its output like ``streamrec ingest``'s
(``bench/drain_clock.py``):

- :func:`bare_confluent_rate`: a bare confluent-kafka consumer that only JSON-decodes each value
  (what reading and decoding alone cost);
- :func:`empty_faust_rate`: an empty Faust agent on raw bytes, on the stock Faust consumer with only
  the fetch wait shortened (the floor of Faust's per-message path, what streamrec's ingest is built
  on);
- :func:`quix_rates`: a Quix Streams application doing ingest's per-user work (history, de-duplication
  and event count in RocksDB state with changelogs, one features message per event), counted on its
  output topic like ``streamrec ingest`` is in ``bench/ingest.py``.

Faust runs in a child process of its own (``python -m bench.ingest_baselines faust-worker``) and
Quix in one under another interpreter (``bench/quix_worker.py``); each prints one JSON result line,
and is stopped whatever happens. Quix Streams is not a project dependency: its caps on
confluent-kafka and pydantic are below streamrec's pins, so it lives in ``<repo>/.venv-quix``,
which :func:`quix_python` creates from ``bench/quix-requirements.txt`` on first use (and anew when
that file changes). ``python -m bench.ingest_baselines`` fills a fresh embedded broker and prints
all three.

Timing from the first message counts what the client had prefetched by then (the first fetch
response) as read after it, for all three alike; it matters only for the fast bare consumer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.transport.drivers import aiokafka as faust_aiokafka

from bench.drain_clock import DrainClock, DrainRates, time_output
from streamrec.processes import ChildProcess, spawn
from streamrec.shared.kafka_config import client_config, faust_credentials, require_bootstrap
from streamrec.shared.settings import Settings, load_settings

if TYPE_CHECKING:
    import aiokafka

# Tansu answers a fetch over several partitions only once the fetch max wait is over, even when
# data is there, so every reader here waits at most this long per fetch (as ingest does).
FETCH_WAIT_MS = 50
RESULT_KEY = "bench_result"  # how a worker's result line starts (bench/quix_worker.py says it too)

REPO = Path(__file__).resolve().parents[1]
QUIX_VENV = REPO / ".venv-quix"
QUIX_REQUIREMENTS = Path(__file__).with_name("quix-requirements.txt")
QUIX_WORKER = Path(__file__).with_name("quix_worker.py")
QUIX_STAMP = "bench-requirements.sha256"  # in QUIX_VENV: the requirements it was filled from


def _deadline(expected: int) -> float:
    # Generous: start-up (group join, topic creation) plus 500 events/s, far below any reader here.
    return time.monotonic() + 120 + expected / 500


def _rate(events: int, first: float | None, last: float | None) -> float:
    """Events/s between the first and the last message (the first one starts the clock)."""
    if first is None or last is None or last <= first:
        raise RuntimeError("no messages, or all at one instant: nothing to time")
    return (events - 1) / (last - first)


# --------------------------------------------------------------------------------------------
# 1. Bare confluent-kafka consumer
# --------------------------------------------------------------------------------------------


def bare_confluent_rate(settings: Settings, topic: str, expected: int) -> float:
    """Events/s of a bare confluent-kafka consumer that reads ``topic`` and only ``orjson.loads`` each value.

    All partitions are assigned from the beginning (no group join); timed from the first message
    to the ``expected``-th.
    """
    consumer = Consumer(
        client_config(
            settings,
            {
                "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",  # required, unused: assign(), no commits
                "enable.auto.commit": False,
                "fetch.wait.max.ms": FETCH_WAIT_MS,
            },
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        decoded, first, deadline = 0, None, _deadline(expected)
        while decoded < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare consumer read {decoded}/{expected} messages")
            messages = consumer.consume(num_messages=10_000, timeout=1.0)
            if messages and first is None:
                first = time.perf_counter()
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"bare consumer: {message.error()}")
                orjson.loads(message.value())
            decoded += len(messages)
        return _rate(decoded, first, time.perf_counter())
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------
# 2. Empty Faust agent
# --------------------------------------------------------------------------------------------


class _ShortFetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a 50 ms fetch wait instead of its hard-coded 1.5 s."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer


class _ShortFetchWaitConsumer(faust_aiokafka.Consumer):
    """The stock Faust consumer but for the fetch wait (no eager delivery, unlike ingest's)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortFetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ShortFetchWaitTransport(faust_aiokafka.Transport):
    Consumer = _ShortFetchWaitConsumer


class _ShortFetchWaitApp(faust.App):
    def _new_transport(self) -> faust_aiokafka.Transport:
        return _ShortFetchWaitTransport(self.conf.broker_consumer, self)


def empty_faust_rate(settings: Settings, topic: str, expected: int) -> float:
    """Events/s of an empty Faust agent (``async for value in stream: count += 1``) on raw bytes.

    Runs in a child process (Faust wants its own process and event loop), timed inside it from the
    first value its agent sees to the ``expected``-th.
    """
    result = _run_worker(
        "faust-worker", settings, ["--topic", topic, "--expected", str(expected)], _deadline(expected)
    )
    return float(result["rate"])


def _faust_worker(topic: str, expected: int) -> None:
    """The child of :func:`empty_faust_rate`: prints one result line once ``expected`` values arrived."""
    settings = load_settings()
    app_id = f"bench-empty-faust-{uuid.uuid4().hex[:8]}"  # a new group each run: read from the start
    app = _ShortFetchWaitApp(
        app_id,
        datadir=tempfile.mkdtemp(prefix=f"{app_id}-"),  # Faust's default is a directory in the cwd
        broker=[f"kafka://{server.strip()}" for server in require_bootstrap(settings).split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,  # no leader topic to create: nothing of the per-message path
        # Tansu holds a first join for half the session timeout (Faust's default: 60 s).
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    count, first = 0, 0.0

    @app.agent(source, name="count")
    async def count_values(stream: faust.StreamT[bytes]) -> None:
        nonlocal count, first
        async for _value in stream:
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == expected:
                _print_result("empty_faust", count, first, time.perf_counter())

    # The parent stops the worker once it has read the result line.
    faust.Worker(app, quiet=True, loglevel="WARNING", redirect_stdouts=False).execute_from_commandline()


# --------------------------------------------------------------------------------------------
# 3. Quix Streams with ingest's per-user state
# --------------------------------------------------------------------------------------------


def quix_python() -> Path:
    """The Python of ``<repo>/.venv-quix``, created and filled from ``bench/quix-requirements.txt`` if needed.

    Filled once: a stamp in the venv holds the requirements' hash, and a changed file (or a venv
    without a stamp, say from an interrupted install) makes a fresh venv, so that nothing of the
    old pins stays behind. The venv is made from the base interpreter of the running one (that of
    ``.venv``), so both run the same Python.
    """
    python = QUIX_VENV / "bin" / "python"
    stamp = QUIX_VENV / QUIX_STAMP
    digest = hashlib.sha256(QUIX_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8").strip() == digest:
        return python
    print(f"  installing Quix Streams into {QUIX_VENV} (once)…", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    for argv in (
        [base, "-m", "venv", "--clear", str(QUIX_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(QUIX_REQUIREMENTS)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    stamp.write_text(digest + "\n", encoding="utf-8")  # last: only a complete install is stamped
    return python


def quix_rates(settings: Settings, topic: str, expected: int) -> DrainRates:
    """Events/s of a Quix Streams app doing ingest's per-user work, whole and steady, on its output.

    Per event, in RocksDB state with changelogs (Quix's default): the user's last
    ``settings.history_len`` ``[item_id, timestamp, event_type]``, the last
    ``settings.dedup_window`` event ids (a repeated id is dropped) and the event count; one features
    message per event (user_id, history item ids, event_count) to a new output topic. The input is
    keyed by user_id, which is what Quix keys its state by, so no re-key hop is needed. The app
    (``bench/quix_worker.py``) runs under :func:`quix_python`. Timed on the output, read here, by
    :func:`bench.drain_clock.time_output`, as ``streamrec ingest`` is in ``bench/ingest.py`` (the
    worker's own count of processed input messages is printed as a check).
    """
    python = quix_python()  # before any timing or topic: the first call installs
    output = f"bench-quix-features-{uuid.uuid4().hex[:8]}"
    # Created here, so that the counting consumer can be assigned before the worker starts.
    admin = AdminClient(client_config(settings))
    new_topic = NewTopic(output, settings.partitions, settings.replication_factor)
    admin.create_topics([new_topic])[output].result(30)
    del admin  # gone before the broker is: a lingering client logs its lost connection
    counter = Consumer(
        client_config(
            settings,
            {"group.id": f"bench-{output}", "enable.auto.commit": False, "fetch.wait.max.ms": FETCH_WAIT_MS},
        )
    )
    worker: ChildProcess | None = None
    try:
        counter.assign([TopicPartition(output, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
        worker = _spawn_quix_worker(python, settings, topic, output, expected)
        started = time.perf_counter()

        def stopped(clock: DrainClock) -> str | None:
            # The worker exits once it counted its inputs, maybe before all its outputs arrived
            # here; one that failed, or exited and sent nothing more for 10 s, stopped short.
            assert worker is not None
            if worker.popen.poll() not in (None, 0):
                return f"the quix worker failed; log:\n{worker.log_tail()}"
            quiet = time.perf_counter() - (clock.last_output or started)
            if not worker.alive() and quiet > 10:
                return f"the quix worker exited; log:\n{worker.log_tail()}"
            return None

        deadline = _deadline(expected)
        clock = time_output(counter, expected, lambda _message: 1, stopped, deadline)
        result = _wait_for_result(worker, deadline)
        print(f"  quix worker's own count: {result['rate']:,.0f} events/s", file=sys.stderr)
        return clock.rates()
    finally:
        counter.close()
        if worker is not None:
            worker.stop()


def _spawn_quix_worker(
    python: Path, settings: Settings, topic: str, output: str, expected: int
) -> ChildProcess:
    """``bench/quix_worker.py`` under ``python``, everything it needs on its command line."""
    if settings.kafka_security_protocol != "PLAINTEXT":
        raise RuntimeError("the Quix baseline connects over PLAINTEXT only (the embedded broker's)")
    name = output.removeprefix("bench-quix-features-")
    argv = [
        str(python),
        "-I",  # isolated: neither bench/ (the script's folder) nor .venv's PYTHONPATH on sys.path
        str(QUIX_WORKER),
        *("--bootstrap", require_bootstrap(settings)),
        *("--topic", topic),
        *("--output", output),
        *("--expected", str(expected)),
        *("--state-dir", str(settings.data_dir / "baselines" / output)),
        *("--session-timeout-ms", str(settings.kafka_session_timeout_ms)),
        *("--fetch-wait-ms", str(FETCH_WAIT_MS)),
        *("--history-len", str(settings.history_len)),
        *("--dedup-window", str(settings.dedup_window)),
    ]
    log_path = settings.data_dir / "baselines" / f"quix-worker-{name}.log"
    return spawn("quix-worker", argv, log_path)


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def _print_result(name: str, events: int, first: float, last: float) -> None:
    """The one JSON line a worker reports its result with (stdout, flushed at once)."""
    line = {RESULT_KEY: name, "events": events, "seconds": last - first, "rate": _rate(events, first, last)}
    print(orjson.dumps(line).decode(), flush=True)


def _spawn_worker(command: str, settings: Settings, args: list[str]) -> ChildProcess:
    """``python -m bench.ingest_baselines COMMAND ARGS`` with the settings in its environment."""
    log_path = settings.data_dir / "baselines" / f"{command}-{uuid.uuid4().hex[:8]}.log"
    # The bench package must be importable wherever the caller runs from.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": path}
    return spawn(command, [sys.executable, "-m", "bench.ingest_baselines", command, *args], log_path, env)


def _wait_for_result(worker: ChildProcess, deadline: float) -> dict[str, Any]:
    """The worker's result line, read from its log; raises if it exits or the deadline passes first."""
    while True:
        text = worker.log_path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            # Found anywhere in the line: Faust's worker writes terminal escapes before it.
            start = line.find(f'{{"{RESULT_KEY}"')
            if start >= 0:
                return orjson.loads(line[start:])
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"{worker.name} gave no result; log:\n{worker.log_tail()}")
        time.sleep(0.1)


def _run_worker(command: str, settings: Settings, args: list[str], deadline: float) -> dict[str, Any]:
    """Run a worker until it reports its result, then stop it (also on any error)."""
    worker = _spawn_worker(command, settings, args)
    try:
        return _wait_for_result(worker, deadline)
    finally:
        worker.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run all three baselines on a fresh filled broker, or the Faust worker (a baseline's child)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=100_000, help="events to fill the topic with")
    commands = parser.add_subparsers(dest="command")
    faust_worker = commands.add_parser("faust-worker", help="the empty Faust agent (a child process)")
    faust_worker.add_argument("--topic", required=True)
    faust_worker.add_argument("--expected", type=int, required=True)
    args = parser.parse_args(argv)

    if args.command == "faust-worker":
        _faust_worker(args.topic, args.expected)
        return 0

    from bench.ingest import PARTITIONS, synthetic_events
    from bench.stack import filled_broker

    events = synthetic_events(args.events)
    print(f"{len(events):,} events over {events['user_id'].nunique():,} users", file=sys.stderr)
    with filled_broker(events, PARTITIONS) as (settings, _run_dir, sent):
        topic = settings.topic_interactions
        for name, baseline in (
            ("bare confluent-kafka (JSON decode)", bare_confluent_rate),
            ("empty Faust agent (raw bytes)", empty_faust_rate),
            ("Quix Streams (per-user state)", lambda *args: quix_rates(*args).whole),
        ):
            print(f"{name}: {baseline(settings, topic, sent):,.0f} events/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
