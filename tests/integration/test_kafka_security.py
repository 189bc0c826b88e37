"""Kafka over TLS and with SASL, against the real broker (Tansu), as far as Tansu allows.

- **TLS.** Tansu 0.6.0 cannot serve TLS itself (its ``--cert`` and ``--key`` options exclude each
  other, and with either one the listener stays plaintext), so a TLS terminator sits in front of
  it, as a TLS load balancer would: the clients do a real TLS handshake, verify the certificate
  against the throwaway CA from the settings, and reach the broker only through it (Tansu
  advertises the terminator's address). confluent-kafka (CLI publisher, topic admin, consumers)
  and the real ingest worker (Faust on aiokafka) run over it; a wrong CA is refused at once.
- **SASL.** Tansu's ``--authentication`` offers SCRAM-SHA-256/512 only (PLAIN: "no shared
  mechanism"), and with its memory storage no user can be created (creating one needs an
  authenticated connection); on shared S3 storage users can be created, but Tansu 0.6.0 then
  answers even the right password with "unknown-user" after the SCRAM exchange. So what runs
  here is the refusal: clients configured from the settings speak SASL/SCRAM, are refused, report
  it clearly within seconds, and never print the password, neither in the error nor in their logs.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from streamrec.embedded import broker_binary
from streamrec.processes import ChildProcess, free_port, spawn, wait_for_port
from streamrec.publisher import Publisher
from streamrec.shared.kafka_config import aiokafka_config
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import (
    KafkaUnavailable,
    MessageCounter,
    accepted_events_counter,
    create_topics,
    existing_topics,
)

from support import TcpProxy, TlsFiles, make_tls_files, wait_for

pytestmark = pytest.mark.integration

SECRET = f"kafka-pw-{uuid.uuid4().hex}"  # unique, so that finding it in a log is never a coincidence
REFUSED_WITHIN = 10.0  # seconds: a refused connection is reported well before any client timeout


def start_tansu(
    run_dir: Path, name: str, advertised_port: int | None = None, *extra: str
) -> tuple[ChildProcess, int]:
    """Tansu on a free loopback port, advertising ``advertised_port`` (default: its own)."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    argv = [
        broker_binary(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        advertised,
        *extra,
    ]
    child = spawn(name, argv, run_dir / f"{name}.log")
    wait_for_port("127.0.0.1", port, timeout=30, child=child)
    return child, port


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_stack(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[tuple[Settings, TcpProxy]]:
    """Tansu reachable only through a TLS terminator; settings for SSL with the test CA; topics."""
    run_dir = tmp_path_factory.mktemp("tls-broker")
    proxy_port = free_port()
    broker, broker_port = start_tansu(run_dir, "broker-tls", proxy_port)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    proxy = TcpProxy(("127.0.0.1", broker_port), proxy_port, tls=server)
    settings = Settings(
        kafka_bootstrap=proxy.address,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=tls_files.ca,
        data_dir=run_dir / "data",
        partitions=2,
        metrics_port=0,
    )
    try:
        create_topics(settings)
        yield settings, proxy
    finally:
        proxy.close()
        broker.stop()


def test_publisher_and_consumer_over_tls(tls_stack: tuple[Settings, TcpProxy]) -> None:
    settings, proxy = tls_stack
    before = proxy.connections
    with Publisher(settings=settings) as publisher:
        for n in range(20):
            publisher.publish(user_id=f"tls-{n % 4}", item_id=f"i{n}", event_type="view")
    counter = MessageCounter(settings, settings.topic_interactions)
    try:
        wait_for(lambda: counter.update() >= 20, 30, "the 20 events, read back over TLS")
    finally:
        counter.close()
    assert proxy.connections > before  # the clients went through the TLS terminator
    # The broker is not reachable in plaintext at that address: TLS was really on.
    with pytest.raises(KafkaUnavailable):
        existing_topics(
            settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT", "kafka_ssl_ca_file": None}),
            timeout=3,
        )


def test_ingest_worker_over_tls(tls_stack: tuple[Settings, TcpProxy]) -> None:
    """The real ingest worker (Faust, aiokafka) joins its group, consumes and produces over TLS."""
    settings, _ = tls_stack
    log_path = settings.data_dir / "ingest.log"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "INFO"}
    worker = spawn("ingest-tls", [sys.executable, "-m", "streamrec", "ingest"], log_path, env)
    features = accepted_events_counter(settings)  # the events of ingest's feature batches
    try:
        wait_for(lambda: '"msg":"ingest ready"' in log_path.read_text(errors="replace") or not worker.alive(),
                 90, "ingest to join its group over TLS")  # fmt: skip
        assert worker.alive(), worker.log_tail()
        with Publisher(settings=settings) as publisher:
            for n in range(10):
                publisher.publish(user_id=f"tls-ingest-{n}", item_id="i1", event_type="purchase")
        wait_for(lambda: features.update() >= 10, 60, "ingest's feature updates, read over TLS")
    finally:
        features.close()
        worker.stop()


def test_wrong_ca_is_refused_at_once(tls_stack: tuple[Settings, TcpProxy], tls_files: TlsFiles) -> None:
    settings, _ = tls_stack
    untrusting = settings.model_copy(update={"kafka_ssl_ca_file": tls_files.other_ca})
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"refused the connection .*(SSL|certificate)") as error:
        existing_topics(untrusting, timeout=60)
    assert time.monotonic() - started < REFUSED_WITHIN, str(error.value)

    async def aiokafka_start() -> None:  # ingest's client library, with what Faust would get
        producer = AIOKafkaProducer(**aiokafka_config(untrusting, request_timeout_ms=5000))
        try:
            await producer.start()
        finally:
            await producer.stop()

    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        asyncio.run(aiokafka_start())
    assert time.monotonic() - started < 30


# --- SASL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings with SCRAM-SHA-512 credentials, pointing at a Tansu that requires authentication."""
    run_dir = tmp_path_factory.mktemp("sasl-broker")
    broker, port = start_tansu(run_dir, "broker-sasl", None, "--authentication")
    try:
        yield Settings(
            kafka_bootstrap=f"127.0.0.1:{port}",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="streamrec",
            kafka_sasl_password=SECRET,
            data_dir=run_dir / "data",
            metrics_port=0,
        )
    finally:
        broker.stop()


def test_refused_sasl_login_is_reported_at_once(sasl_settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"refused the connection \(.*SASL.*authentication") as error:
        existing_topics(sasl_settings, timeout=60)
    assert time.monotonic() - started < REFUSED_WITHIN
    assert "STREAMREC_KAFKA_SECURITY_PROTOCOL" in str(error.value)
    assert SECRET not in str(error.value)


def test_the_password_is_in_no_log(sasl_settings: Settings) -> None:
    """The CLI and the ingest worker, at DEBUG, report the refused login but never the password."""
    env = {**os.environ, **sasl_settings.as_env(), "STREAMREC_LOG_LEVEL": "DEBUG"}
    assert env["STREAMREC_KAFKA_SASL_PASSWORD"] == SECRET  # the children do get it
    cli = subprocess.run(
        [sys.executable, "-m", "streamrec", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode != 0
    assert "SASL" in cli.stdout + cli.stderr and "authentication" in cli.stdout + cli.stderr
    sasl_settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = sasl_settings.data_dir / "ingest-sasl.log"
    worker = spawn("ingest-sasl", [sys.executable, "-m", "streamrec", "ingest"], log_path, env)
    try:
        wait_for(lambda: not worker.alive(), REFUSED_WITHIN + 20, "ingest to give up on the refused login")
    finally:
        worker.stop()
    ingest_log = log_path.read_text(errors="replace")
    assert "refused the connection" in ingest_log and "SASL authentication error" in ingest_log, ingest_log[
        -2000:
    ]
    logs = {"CLI": cli.stdout + cli.stderr, "ingest": ingest_log}
    assert all(SECRET not in text for text in logs.values()), [
        name for name, text in logs.items() if SECRET in text
    ]
