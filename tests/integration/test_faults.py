"""Crashes and outages: real kills and real outages of a stack of its own; nothing is lost.

One stack for the whole module (so the shared session stack is never disturbed): a broker of its
own (one Apache Kafka node; the embedded broker with ``STREAMREC_TEST_BROKER=embedded``) reached
only through a :class:`support.TcpProxy` (the broker advertises the proxy's
address, so every client goes through it), a Redis this module starts and stops itself, and
ingest, scorer and trainer as real processes. The tests run in file order and each leaves the
stack healthy: kill -9 of ingest mid-replay, kill -9 of the scorer, Redis down for 10 s, the
broker unreachable for 10 s, then SIGTERM of every service. Bounds: each wait is capped (at most
180 s for a replay to be absorbed); the module takes about 2.5 minutes on 2 cores (≤ 6 required).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from streamrec.embedded import broker_binary, start_redis
from streamrec.kafka_cluster import ApacheKafka
from streamrec.processes import ChildProcess, free_port, spawn, wait_for_port
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings
from streamrec.stack import Stack
from streamrec.synthetic import generate

from support import (
    FeatureReader,
    LiveStack,
    TcpProxy,
    chosen_broker,
    expected_features,
    metric_total,
    prefixed,
    touch_events,
    wait_for,
    wait_fresh,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

OUTAGE_SECONDS = 10.0
UNCLEAN_EXIT_LOG = "did not stop cleanly"  # ingest's warning when it rebuilds its tables
FRESH_TIMEOUT = 90.0  # a restarted service joins its group (Tansu holds a first join ~5 s) and catches up


@dataclass
class FaultStack:
    """The module's stack and the handles to break it."""

    live: LiveStack
    proxy: TcpProxy
    redis_child: ChildProcess
    redis_port: int
    redis_dir: Path

    @property
    def stack(self) -> Stack:
        return self.live.stack

    def child(self, name: str) -> ChildProcess:
        return self.stack.children[name]

    def port(self, name: str) -> int:
        return self.stack.ops_ports[name]

    def kill9(self, name: str) -> None:
        """SIGKILL a service: no handler runs, nothing is flushed or committed."""
        child = self.child(name)
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait(10)
        assert child.popen.returncode == -signal.SIGKILL

    def restart(self, name: str) -> None:
        """Start a service again that is no longer running (what the supervisor does) and wait until ready."""
        assert not self.child(name).alive()
        self.stack.supervise()
        self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 120) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port(name)}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, f"{name} to be ready")


@contextmanager
def broker_behind_a_proxy(run_dir: Path) -> Iterator[TcpProxy]:
    """A broker of the module's own that listens on a port of its own but advertises the proxy's:
    metadata sends every client (after bootstrap) to the proxy, so cutting the proxy cuts the
    broker off for everyone. One Apache Kafka node, or the embedded broker with
    ``STREAMREC_TEST_BROKER=embedded``."""
    proxy_port = free_port()
    if chosen_broker() == "embedded":
        broker_port = free_port()
        broker = spawn(
            "broker",
            [
                broker_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{broker_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{proxy_port}",
            ],
            run_dir / "broker.log",
        )
        proxy = TcpProxy(("127.0.0.1", broker_port), proxy_port)
        try:
            wait_for_port("127.0.0.1", broker_port, 30, broker)
            yield proxy
        finally:
            proxy.close()
            broker.stop()
        return
    kafka = ApacheKafka(
        run_dir / "apache-kafka",
        server_properties={"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy_port}"},
    )
    proxy = TcpProxy(("127.0.0.1", kafka.nodes[0].broker_port), proxy_port)
    try:
        with kafka:  # its readiness check already goes through the proxy
            yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    run_dir = tmp_path_factory.mktemp("faults")
    redis_port = free_port()
    redis_dir = run_dir / "redis"
    handle: FaultStack | None = None
    stack: Stack | None = None
    with broker_behind_a_proxy(run_dir) as proxy:
        redis_child, redis_url = start_redis(redis_dir, port=redis_port)
        try:
            settings = Settings(
                kafka_bootstrap=proxy.address,
                redis_url=redis_url,
                partitions=2,
                popular_publish_seconds=1.0,
                scorer_batch_wait_ms=10,
                top_n=20,
                # The trainer only keeps its event log here: no training cycle competes for the CPU.
                train_trigger="all",  # both conditions, neither ever met (a first cycle would be due at once)
                train_min_new_events=10**9,
                train_interval_seconds=10**6,
                log_level="INFO",
                ingest_stop_timeout_seconds=10.0,  # test 6 waits for it
            ).with_data_dir(run_dir / "data")
            stack = Stack(settings, run_dir, ("ingest", "scorer", "trainer")).start()
            live = stack.settings
            client = redis.Redis.from_url(live.redis_url or "")
            handle = FaultStack(
                LiveStack(stack, live, client, RedisKeys(live.redis_prefix)),
                proxy,
                redis_child,
                redis_port,
                redis_dir,
            )
            for name in ("ingest", "scorer", "trainer"):
                handle.wait_ready(name)
            yield handle
        finally:
            if stack is not None:
                stack.stop()
            (handle.redis_child if handle else redis_child).stop()


@pytest.fixture(autouse=True)
def healthy(faults: FaultStack) -> Iterator[None]:
    """Each test starts with every service running, even if an earlier one failed mid-fault."""
    if faults.redis_child.popen.poll() is not None:
        faults.redis_child, _ = start_redis(faults.redis_dir, port=faults.redis_port)
    faults.proxy.restore()
    faults.stack.supervise()
    for name in ("ingest", "scorer", "trainer"):
        faults.wait_ready(name)
    yield


# --- helpers -------------------------------------------------------------------------------------


def publish(live: LiveStack, events: pd.DataFrame, source: str) -> int:
    with Publisher(settings=live.settings) as publisher:
        return publish_stream(publisher, dataset_events(events, source), len(events), progress=False)


def trainer_position(faults: FaultStack) -> float:
    """Events the trainer has appended to its log so far (its log sequence)."""
    return metric_total(faults.port("trainer"), "streamrec_trainer_log_position")


def trainer_settled(faults: FaultStack, seconds: float = 2.0) -> float:
    """The trainer's log position once it has not moved for ``seconds`` (it caught up)."""
    last = trainer_position(faults)
    while True:
        time.sleep(seconds)
        now = trainer_position(faults)
        if now == last:
            return now
        last = now


def users_served_before(
    live: LiveStack, prefix: str, seed: int, source: str, users: int = 40, items: int = 60, clusters: int = 3
) -> list[str]:
    """Stream a small synthetic set of ``prefix`` users in; return them once each has a fresh list."""
    events = prefixed(
        generate(users=users, items=items, clusters=clusters, events_per_user=(3, 6), seed=seed), prefix
    )
    served = sorted(events.user_id.unique())
    started = time.time()
    live.stream_in(events, source)
    wait_fresh(live, served, started, FRESH_TIMEOUT, f"every {prefix}* user's list before the fault")
    return served


# --- 1. kill -9 of ingest in the middle of a replay -----------------------------------------------


def test_ingest_kill9_mid_replay_loses_nothing_and_counts_nothing_twice(faults: FaultStack) -> None:
    live = faults.live
    events = prefixed(generate(users=150, items=120, clusters=5, events_per_user=(40, 80), seed=17), "k-")
    expected = expected_features(events, "kill", live.settings)
    total = len(events)
    chunks = 40  # a paced replay (about 8 s) so that the kill lands in its middle
    reader = FeatureReader(live.settings)

    def replay() -> None:
        ordered = list(dataset_events(events, "kill"))
        with Publisher(settings=live.settings) as publisher:
            for k in range(chunks):
                publish_stream(
                    publisher, ordered[k * total // chunks : (k + 1) * total // chunks], progress=False
                )
                time.sleep(0.2)

    publisher = threading.Thread(target=replay, name="replay")
    publisher.start()
    try:
        wait_for(lambda: reader.read(0.3) and reader.events >= total // 3, 120, "a third of the replay")
        at_kill = reader.events
        faults.kill9("ingest")
        faults.restart("ingest")
    finally:
        publisher.join(120)
    assert at_kill < total, "the replay was over before the kill"

    def complete() -> bool:
        latest = reader.read(1.0)
        return all(latest.get(user, (0,))[0] >= count for user, (count, _) in expected.items())

    try:
        wait_for(complete, 180, f"ingest to absorb all {total} events after the restart")
    except pytest.fail.Exception:
        # CI keeps no temporary files: put what ingest did after its restart into the failure.
        missing = {user: (reader.latest.get(user, (0,))[0], count) for user, (count, _) in expected.items()}
        behind = {user: pair for user, pair in missing.items() if pair[0] < pair[1]}
        pytest.fail(
            f"ingest did not absorb all {total} events within 180 s of its restart; "
            f"{len(behind)} users behind (got, expected): {dict(list(behind.items())[:10])}\n"
            f"ingest log:\n{faults.child('ingest').log_tail(60)}"
        )
    reader.read(2.0)  # anything still in flight (a double count would show up here)
    reader.close()
    got = {user: reader.latest[user] for user in expected}
    wrong = {user: (got[user][0], expected[user][0]) for user in expected if got[user] != expected[user]}
    assert not wrong, f"{len(wrong)} users differ from an exactly-once run (got, expected count): {wrong}"
    # Every accepted event was announced to the trainer: each event id is in some features batch
    # (a re-delivered event may be announced twice, never not at all).
    expected_ids: dict[str, set[str]] = {}
    for raw in dataset_events(events, "kill"):
        expected_ids.setdefault(str(raw["user_id"]), set()).add(str(raw["event_id"]))
    gaps = {user: ids - reader.announced.get(user, set()) for user, ids in expected_ids.items()}
    gaps = {user: missing for user, missing in gaps.items() if missing}
    assert not gaps, f"features never sent for some events of {len(gaps)} users: {sorted(gaps)[:10]}"
    duplicates = metric_total(faults.port("ingest"), "streamrec_ingest_events_total", outcome="duplicate")
    print(f"kill -9 at {at_kill}/{total} features; {duplicates:.0f} redelivered events dropped as duplicates")


# --- 2. kill -9 of the scorer ---------------------------------------------------------------------


def test_scorer_kill9_keeps_serving_and_catches_up(faults: FaultStack) -> None:
    live = faults.live
    users = users_served_before(live, "s-", 23, "scorer-before")
    served = {user: live.redis.get(live.keys.recs(user)) for user in users}

    faults.kill9("scorer")
    updated = users[::2]
    outage_started = time.time()
    live.stream_in(touch_events(updated, "i1", outage_started), "scorer-outage")
    # While the scorer is down, the lists it wrote are still there, byte for byte.
    assert {user: live.redis.get(live.keys.recs(user)) for user in users} == served

    faults.restart("scorer")
    wait_fresh(
        live, updated, outage_started, FRESH_TIMEOUT, "fresh lists for the users updated in the outage"
    )
    # It resumed from its committed offsets: it re-scored the outage's users (and at most the one
    # batch it had not committed), not the whole topic from the beginning.
    rescored = metric_total(faults.port("scorer"), "streamrec_scorer_lists_total", trigger="event")
    assert len(updated) <= rescored <= len(updated) + live.settings.scorer_batch_size


# --- 3. Redis down for 10 s -----------------------------------------------------------------------


def test_redis_outage_is_waited_out_and_owed_writes_complete(faults: FaultStack) -> None:
    live = faults.live
    users = users_served_before(live, "r-", 29, "redis-before")
    pids = {name: faults.child(name).pid for name in ("ingest", "scorer", "trainer")}
    trainer_before = trainer_position(faults)

    live.redis.shutdown(save=True)  # a stop that keeps the data (dump.rdb in the data dir)
    faults.redis_child.popen.wait(10)
    down_at = time.monotonic()
    updated = users[::2]
    outage_started = time.time()
    # Ingest and trainer need no Redis: the outage's events are accepted and logged as usual.
    live.stream_in(touch_events(updated, "i2", outage_started), "redis-outage", timeout=OUTAGE_SECONDS)
    wait_for(
        lambda: trainer_position(faults) >= trainer_before + len(updated),
        OUTAGE_SECONDS,
        "the trainer to log the outage's events",
    )
    # The scorer owes writes and retries them with backoff instead of crashing.
    wait_for(
        lambda: metric_total(faults.port("scorer"), "streamrec_scorer_redis_errors_total") >= 2,
        OUTAGE_SECONDS,
        "the scorer to retry its Redis writes",
    )
    readyz = httpx.get(f"http://127.0.0.1:{faults.port('scorer')}/readyz", timeout=2)
    assert readyz.status_code == 503 and "Redis" in readyz.text
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))

    faults.redis_child, _ = start_redis(faults.redis_dir, port=faults.redis_port)
    wait_fresh(live, updated, outage_started, FRESH_TIMEOUT, "the writes owed from the outage")
    assert all(live.cached(user) is not None for user in users)  # the data from before is back too
    assert {name: faults.child(name).pid for name in pids} == pids, "a service restarted"
    assert all(faults.child(name).alive() for name in pids)
    faults.wait_ready("scorer", 30)


# --- 4. the broker unreachable for 10 s -------------------------------------------------------------


def test_broker_outage_services_reconnect_on_their_own(faults: FaultStack) -> None:
    live = faults.live
    users = users_served_before(live, "b-", 31, "broker-before")
    pids = {name: faults.child(name).pid for name in ("ingest", "scorer", "trainer")}
    trainer_before = trainer_position(faults)

    connections = faults.proxy.connections
    faults.proxy.cut()
    time.sleep(OUTAGE_SECONDS)
    faults.proxy.restore()

    updated = users[::2]
    restored_at = time.time()
    live.stream_in(touch_events(updated, "i3", restored_at), "broker-after", timeout=FRESH_TIMEOUT)
    wait_fresh(live, updated, restored_at, FRESH_TIMEOUT, "fresh lists after the broker came back")
    wait_for(
        lambda: trainer_position(faults) >= trainer_before + len(updated),
        FRESH_TIMEOUT,
        "the trainer to log events again",
    )
    assert {name: faults.child(name).pid for name in pids} == pids, "a service had to be restarted"
    assert all(faults.child(name).alive() for name in pids)
    # The same processes opened new connections: they reconnected on their own.
    assert faults.proxy.connections > connections + len(pids)


# --- 5. SIGTERM: progress committed, pending writes flushed -----------------------------------------


@pytest.mark.parametrize("name", ["ingest", "scorer", "trainer"])
def test_sigterm_commits_progress_and_flushes(faults: FaultStack, name: str) -> None:
    live = faults.live
    prefix = f"t-{name}-"
    users = users_served_before(live, prefix, 37, f"term-{name}", users=20, items=40, clusters=2)
    trainer_logged = trainer_settled(faults)

    rebuilds = faults.child(name).log_path.read_text().count(UNCLEAN_EXIT_LOG)
    code = faults.child(name).stop()  # SIGTERM; SIGKILL only after 15 s
    assert code == 0, f"{name} did not stop cleanly on SIGTERM (exit code {code})"
    faults.restart(name)
    time.sleep(3)  # time to re-read anything left uncommitted (there must be nothing)
    port = faults.port(name)
    if name == "ingest":
        assert metric_total(port, "streamrec_ingest_events_total") == 0, "input re-read after a clean stop"
        # ...and its tables were reopened from local state, not rebuilt as after a crash.
        assert faults.child(name).log_path.read_text().count(UNCLEAN_EXIT_LOG) == rebuilds
    elif name == "scorer":
        assert metric_total(port, "streamrec_scorer_lists_total", trigger="event") == 0
    else:
        assert trainer_position(faults) == trainer_logged, "events logged twice after a clean stop"

    # ...and the restarted service does its job.
    updated = users[:5]
    after = time.time()
    live.stream_in(touch_events(updated, "i4", after), f"term-{name}-after")
    wait_fresh(live, updated, after, FRESH_TIMEOUT, f"fresh lists after {name} restarted")


# --- 6. SIGTERM while the broker is gone: the stop is bounded ---------------------------------------


def test_sigterm_without_a_broker_stops_ingest_within_its_stop_timeout(faults: FaultStack) -> None:
    live = faults.live
    users = users_served_before(live, "s-", 41, "stop-before", users=10, items=20, clusters=2)
    child = faults.child("ingest")
    faults.proxy.cut()  # a graceful stop commits offsets and leaves the group: both need the broker
    try:
        started = time.monotonic()
        code = child.stop(timeout=live.settings.ingest_stop_timeout_seconds + 30)  # SIGTERM, then SIGKILL
        took = time.monotonic() - started
    finally:
        faults.proxy.restore()
    assert code == 1, f"ingest exited with {code} after {took:.0f}s (SIGKILL means it never gave up)"
    assert took < live.settings.ingest_stop_timeout_seconds + 10, f"the stop took {took:.0f}s"
    assert "next_start_reads_again" in child.log_tail(20), child.log_tail(20)
    faults.restart("ingest")
    after = time.time()
    live.stream_in(touch_events(users, "i6", after), "stop-after")
    wait_fresh(live, users, after, FRESH_TIMEOUT, "fresh lists after ingest restarted")
