"""Helpers shared by the tests: waiting for conditions, and handles on a running stack."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from streamrec.ingest.features import UserState, apply_event
from streamrec.kafka_cluster import ApacheKafka, java_binary, kafka_libs
from streamrec.processes import StackError
from streamrec.publisher import Publisher, dataset_events, publish_stream
from streamrec.shared.cached_list import CachedList
from streamrec.shared.events import Interaction, parse_event
from streamrec.shared.kafka_config import client_config
from streamrec.shared.messages import FeatureBatch, UserSnapshot, decode_feature_batch
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import MessageCounter, accepted_events_counter
from streamrec.stack import Stack
from streamrec.synthetic import generate

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


BROKERS = ("apache-kafka", "embedded")


def chosen_broker() -> str:
    """The broker of the integration tests' stacks: ``STREAMREC_TEST_BROKER``, Apache Kafka by default."""
    broker = os.environ.get("STREAMREC_TEST_BROKER") or BROKERS[0]
    if broker not in BROKERS:
        raise pytest.UsageError(f"STREAMREC_TEST_BROKER={broker}: expected one of {', '.join(BROKERS)}")
    return broker


@contextmanager
def broker_of_its_own(run_dir: Path, nodes: int = 1) -> Iterator[dict[str, str]]:
    """Settings for a stack's own broker: an Apache Kafka of ``nodes`` nodes started here (its
    ``kafka_bootstrap``), or nothing with ``STREAMREC_TEST_BROKER=embedded`` (the stack starts the
    embedded broker itself)."""
    if chosen_broker() == "embedded":
        yield {}
        return
    with ApacheKafka(run_dir / "apache-kafka", nodes=nodes) as kafka:
        yield {"kafka_bootstrap": kafka.bootstrap}


class FeatureMessage:
    """A user-features message as confluent-kafka hands it over (for unit tests of its readers):
    the users with their histories, the users erased, and where it sits."""

    def __init__(
        self,
        offset: int,
        users: dict[str, list[str]],
        forgotten: tuple[str, ...] = (),
        partition: int = 0,
        topic: str = "streamrec.user-features",
    ) -> None:
        self._offset, self._partition, self._topic = offset, partition, topic
        self._value = FeatureBatch(
            users=[UserSnapshot(user, history, len(history)) for user, history in users.items()],
            events=[],
            updated_at=0.0,
            forgotten=list(forgotten),
        ).to_json()

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


def require_apache_kafka() -> None:
    """Skip the calling test if Apache Kafka's jars or Java are missing (``scripts/fetch-kafka``)."""
    try:
        kafka_libs()
        java_binary()
    except StackError as exc:
        pytest.skip(str(exc))


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll until ``condition()`` is truthy; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def group_members_with_partitions(settings: Settings, group: str) -> int:
    """How many members of consumer ``group`` hold at least one partition (0 while it rebalances)."""
    admin = AdminClient(client_config(settings))
    try:
        (description,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        return sum(
            1 for member in description.result(timeout=15).members if member.assignment.topic_partitions
        )
    except KafkaException:
        return 0


@dataclass
class LiveStack:
    """The running stack plus handles the tests use."""

    stack: Stack
    settings: Settings
    redis: redis.Redis
    keys: RedisKeys

    def env(self) -> dict[str, str]:
        """Environment for a `streamrec` subprocess talking to this stack."""
        return {**os.environ, **self.settings.as_env()}

    def cli(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `streamrec ARGS…` against this stack (``env``: extra variables)."""
        return subprocess.run(
            [sys.executable, "-m", "streamrec", *args],
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cached(self, user_id: str) -> CachedList | None:
        """The user's list as the scorer wrote it, or None."""
        raw = self.redis.get(self.keys.recs(user_id))
        return None if raw is None else CachedList.decode(raw)

    def stream_in(self, frame: pd.DataFrame, source: str, timeout: float = 180) -> int:
        """Publish an interaction frame (time order, event ids ``source:row``) and wait until
        ingest accepted every event; returns how many were sent."""
        counter = self.feature_updates()
        try:
            before = counter.update()
            with Publisher(settings=self.settings) as publisher:
                sent = publish_stream(publisher, dataset_events(frame, source), len(frame), progress=False)
            wait_for(
                lambda: counter.update() >= before + sent, timeout, f"ingest to accept {sent} {source} events"
            )
        finally:
            counter.close()
        return sent

    def feature_updates(self) -> MessageCounter:
        """A counter of the events ingest accepted (the events of its user-features batches)."""
        return accepted_events_counter(self.settings)


@dataclass
class TrainedStack:
    """The live stack after a synthetic stream went through it and one model was trained."""

    live: LiveStack
    events: pd.DataFrame
    version: str


@contextmanager
def only_the_strategies() -> Iterator[None]:
    """Let Hypothesis generate from the strategies alone, without the literals it harvests from
    the project's loaded modules (wrap the call of a ``@given`` function).

    Those literals would make the generated data change with any edit anywhere in the code base, and with
    the set of test modules a session happened to import; without them it is the same on every
    run. (Hypothesis has no setting for this: the hook is internal, hence the pinned version.)
    """
    from hypothesis.internal.conjecture import providers

    original = providers.HypothesisProvider.__dict__["_local_constants"]
    providers.HypothesisProvider._local_constants = property(lambda _self: providers.Constants())  # type: ignore[assignment]
    providers.CONSTANTS_CACHE.cache.clear()  # pools computed with the harvested literals
    try:
        yield
    finally:
        providers.HypothesisProvider._local_constants = original  # type: ignore[assignment]
        providers.CONSTANTS_CACHE.cache.clear()


def metric_total(port: int, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples (those with ``labels``) on a service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class TcpProxy:
    """A TCP relay from a local port to ``upstream`` that can go dark: :meth:`cut` drops every
    connection and refuses new ones until :meth:`restore`, like a broker behind a failed network.

    Runs an asyncio loop on a daemon thread. Clients are pointed at :attr:`address`; the broker
    must advertise that address too, or clients would reconnect to it directly after bootstrap.
    With ``tls`` it terminates TLS in front of a plaintext upstream, as a TLS load balancer does.
    """

    def __init__(self, upstream: tuple[str, int], port: int, tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.connections = 0  # accepted while up, for the test's figures
        self._open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True, name="tcp-proxy")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the TCP proxy did not start")

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls)
        )
        started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self._open:  # "unreachable": the connection is reset at once
            client_writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {client_writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass  # the other side is gone: close ours too
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))
        self._writers -= {client_writer, up_writer}

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""

        def go() -> None:
            self._open = False
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(go)

    def restore(self) -> None:
        """Accept and relay connections again."""
        self._loop.call_soon_threadsafe(setattr, self, "_open", True)

    def close(self) -> None:
        """Drop every connection, finish the relay tasks and stop the thread."""

        async def shutdown() -> None:
            self._open = False
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate it signed for 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail the handshake


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate :class:`TlsFiles` with the openssl CLI (1-day RSA keys, no passwords)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=streamrec test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
    extensions = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extension in extensions.items():
        (directory / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + extension)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


# --- what a stream should have produced, and reading what it did (fault tests) --------------------


def prefixed(events: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The same events for users of their own (so tests never share a user)."""
    return events.assign(user_id=prefix + events.user_id)


def expected_features(
    events: pd.DataFrame, source: str, settings: Settings
) -> dict[str, tuple[int, list[str]]]:
    """Each user's (event_count, history) after ingest applies every event exactly once, in publish order."""
    states: dict[str, UserState] = {}
    for raw in dataset_events(events, source):
        event = parse_event(orjson.dumps(raw))
        assert isinstance(event, Interaction)
        apply_event(states.setdefault(event.user_id, UserState()), event, settings)
    return {user: (state.event_count, state.history_item_ids()) for user, state in states.items()}


class FeatureReader:
    """Follows the user-features topic from the start: each user's latest (event_count, history)."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused"})
        topic = settings.topic_user_features
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
        self.latest: dict[str, tuple[int, list[str]]] = {}
        self.announced: dict[str, set[str]] = {}  # every event id announced per user (the trainer's data)
        self.updated_at: dict[str, float] = {}  # the ``updated_at`` of each user's latest features
        self.messages = 0
        self.events = 0

    def read(self, seconds: float = 1.0) -> dict[str, tuple[int, list[str]]]:
        """Read for up to ``seconds``; a user's messages are on one partition, in order, so the last wins."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(1000, timeout=0.2):
                if message.error():
                    continue
                self.messages += 1
                batch = decode_feature_batch(message.value())
                self.events += len(batch.events)
                for user in batch.users:
                    self.latest[user.user_id] = (user.event_count, user.history)
                    self.updated_at[user.user_id] = batch.updated_at
                for event in batch.events:
                    self.announced.setdefault(event.user_id, set()).add(event.event_id or "")
        return self.latest

    def close(self) -> None:
        self.consumer.close()


def wait_fresh(live: LiveStack, users: list[str], since: float, timeout: float, what: str) -> None:
    """Wait until every user's list in Redis was generated after ``since``."""

    def fresh() -> bool:
        lists = [live.cached(user) for user in users]
        return all(cached is not None and cached.generated_at >= since for cached in lists)

    wait_for(fresh, timeout, what)


def touch_events(users: list[str], item: str, at: float) -> pd.DataFrame:
    """One new event per user."""
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": item,
            "timestamp": at,
            "value": float("nan"),
            "event_type": "click",
            "row": range(len(users)),  # the event ids' suffix
        }
    )


# --- Redis beyond one server (issue 27; the fixtures are in tests/integration/conftest.py) ---------

REDIS_TOPOLOGIES = ("one server", "cluster")


def on_each_redis(name: str) -> Any:
    """A module's override of the session fixture ``name`` (``trained_stack`` or ``live_stack``)
    that runs each of the module's tests that take it twice (``redis_topology``): on the session
    stack (one redis-server), then on its twin whose services all use a Redis Cluster
    (``cluster_<name>``, started at the first such test of the session;
    tests/integration/conftest.py). In a module::

        trained_stack = on_each_redis("trained_stack")

    The parameter is ``redis_topology``'s, not this fixture's: a parametrised fixture named like the
    session one would make pytest run the session one again for every test. Override one of the
    two names in a module: the session's ``trained_stack`` asks for ``live_stack``, which must stay
    the session's (a test of the live stack alone can take ``trained_stack.live``).
    """

    @pytest.fixture(name=name)
    def on_each(request: pytest.FixtureRequest, redis_topology: str) -> Any:
        return request.getfixturevalue(name if redis_topology == "one server" else f"cluster_{name}")

    return on_each


def train_once(live: LiveStack) -> TrainedStack:
    """Stream the session's synthetic dataset in, wait for ingest, train once via the CLI (the
    session stack's ``trained_stack``, and the cluster stack's)."""
    events = generate(users=80, items=60, clusters=4, events_per_user=(6, 20), seed=3)
    live.stream_in(events, "synthetic")
    result = live.cli("train", "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    version = ModelRegistry(live.settings.model_dir).promoted_version()
    assert version is not None and version in result.stdout
    return TrainedStack(live, events, version)


def clear_prefix(store: Any, prefix: str) -> None:
    """Delete every key under ``prefix`` (one server or a cluster: every primary), not the others'."""
    keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        store.delete(*keys)  # a cluster client sends one DEL per slot
