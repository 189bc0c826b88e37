"""Kafka over TLS and with SASL logins, on Apache Kafka: its own TLS and its own SASL.

One single-node Apache Kafka for the module, with two listeners beside its plaintext one:

- **SSL**: TLS with a server certificate of the tests' throwaway CA. confluent-kafka clients (CLI
  publisher, topic admin, consumers) run over it; the broker is not reachable in plaintext there;
  a client that trusts another CA is refused at once (confluent-kafka and aiokafka).
- **SASL_SSL**: TLS and a login, one user for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (the SCRAM
  credentials written when the storage is formatted). Every mechanism logs in, with confluent-kafka
  and with aiokafka (ingest's client, as Faust gets it); the real ingest worker joins its group,
  consumes and produces with SCRAM-SHA-512 at DEBUG and never prints the password; a wrong password
  is refused, reported clearly within seconds, and printed by no one.

The embedded broker (Tansu 0.6) serves neither TLS nor a SASL login that succeeds: its gaps are in
docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from streamrec.kafka_cluster import SASL_MECHANISMS, ApacheKafka, SecureListener
from streamrec.processes import spawn
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

from support import TlsFiles, make_tls_files, require_apache_kafka, wait_for

pytestmark = pytest.mark.integration

USER = "streamrec"
SECRET = f"kafka-pw-{uuid.uuid4().hex}"  # unique, so that finding it in a log is never a coincidence
WRONG = f"kafka-wrong-{uuid.uuid4().hex}"
REFUSED_WITHIN = 10.0  # seconds: a refused connection is reported well before any client timeout


@dataclass
class SecureKafka:
    """The module's broker, its two secure listeners and the test CA's files."""

    kafka: ApacheKafka
    tls: SecureListener
    login: SecureListener
    files: TlsFiles
    run_dir: Path

    def tls_settings(self, ca: Path | None = None) -> Settings:
        """A client of the SSL listener, trusting ``ca`` (default: the CA that signed the broker)."""
        return Settings(
            kafka_bootstrap=self.kafka.bootstrap_of(self.tls),
            kafka_security_protocol="SSL",
            kafka_ssl_ca_file=ca or self.files.ca,
            data_dir=self.run_dir / "data",
            partitions=2,
            metrics_port=0,
        )

    def login_settings(self, mechanism: str = "SCRAM-SHA-512", password: str = SECRET) -> Settings:
        """A client of the SASL_SSL listener, logging in as the module's user."""
        return Settings(
            kafka_bootstrap=self.kafka.bootstrap_of(self.login),
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username=USER,
            kafka_sasl_password=password,
            kafka_ssl_ca_file=self.files.ca,
            data_dir=self.run_dir / "data",
            partitions=2,
            metrics_port=0,
        )


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """One Apache Kafka node with an SSL and a SASL_SSL listener; streamrec's topics created over TLS."""
    require_apache_kafka()
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    run_dir = tmp_path_factory.mktemp("secure-kafka")
    tls = SecureListener("SSL", files.server_cert, files.server_key)
    login = SecureListener("SASL_SSL", files.server_cert, files.server_key, {USER: SECRET})
    with ApacheKafka(run_dir / "kafka", secure_listeners=[tls, login]) as kafka:
        secure = SecureKafka(kafka, tls, login, files, run_dir)
        create_topics(secure.tls_settings())
        yield secure


# --- TLS -----------------------------------------------------------------------------------------


def test_publisher_and_consumer_over_tls(secure_kafka: SecureKafka) -> None:
    settings = secure_kafka.tls_settings()
    with Publisher(settings=settings) as publisher:
        for n in range(20):
            publisher.publish(user_id=f"tls-{n % 4}", item_id=f"i{n}", event_type="view")
    counter = MessageCounter(settings, settings.topic_interactions)
    try:
        wait_for(lambda: counter.update() >= 20, 30, "the 20 events, read back over TLS")
    finally:
        counter.close()
    # The broker is not reachable in plaintext at that address: TLS was really on.
    with pytest.raises(KafkaUnavailable):
        existing_topics(
            settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT", "kafka_ssl_ca_file": None}),
            timeout=3,
        )


def test_wrong_ca_is_refused_at_once(secure_kafka: SecureKafka) -> None:
    untrusting = secure_kafka.tls_settings(ca=secure_kafka.files.other_ca)
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


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_every_mechanism_logs_in(secure_kafka: SecureKafka, mechanism: str) -> None:
    """confluent-kafka (CLI, scorer, trainer) and aiokafka (ingest) log in and produce."""
    settings = secure_kafka.login_settings(mechanism)
    assert settings.topic_interactions in existing_topics(settings, timeout=30)

    async def aiokafka_send() -> None:
        producer = AIOKafkaProducer(**aiokafka_config(settings, request_timeout_ms=10_000))
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic_interactions, b"{}", key=b"login-check")
        finally:
            await producer.stop()

    asyncio.run(aiokafka_send())


def test_ingest_worker_logs_in_and_prints_no_password(secure_kafka: SecureKafka) -> None:
    """The real ingest worker (Faust, aiokafka) joins its group, consumes and produces over
    SASL_SSL with SCRAM-SHA-512, at DEBUG, and its log never holds the password."""
    settings = secure_kafka.login_settings("SCRAM-SHA-512")
    log_path = settings.data_dir / "ingest-sasl.log"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "DEBUG"}
    assert env["STREAMREC_KAFKA_SASL_PASSWORD"] == SECRET  # the worker does get it
    worker = spawn("ingest-sasl", [sys.executable, "-m", "streamrec", "ingest"], log_path, env)
    features = accepted_events_counter(settings)  # the events of ingest's feature batches
    try:
        wait_for(lambda: '"msg":"ingest ready"' in log_path.read_text(errors="replace") or not worker.alive(),
                 90, "ingest to join its group over SASL_SSL")  # fmt: skip
        assert worker.alive(), worker.log_tail()
        with Publisher(settings=settings) as publisher:
            for n in range(10):
                publisher.publish(user_id=f"sasl-ingest-{n}", item_id="i1", event_type="purchase")
        wait_for(lambda: features.update() >= 10, 60, "ingest's feature updates, read over SASL_SSL")
    finally:
        features.close()
        worker.stop()
    assert SECRET not in log_path.read_text(errors="replace")


def test_refused_sasl_login_is_reported_at_once(secure_kafka: SecureKafka) -> None:
    settings = secure_kafka.login_settings(password=WRONG)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"refused the connection \(.*SASL.*authentication") as error:
        existing_topics(settings, timeout=60)
    assert time.monotonic() - started < REFUSED_WITHIN
    assert "STREAMREC_KAFKA_SECURITY_PROTOCOL" in str(error.value)
    assert WRONG not in str(error.value)


def test_a_refused_password_is_in_no_log(secure_kafka: SecureKafka) -> None:
    """The CLI and the ingest worker, at DEBUG, report the refused login but never the password."""
    settings = secure_kafka.login_settings(password=WRONG)
    env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "DEBUG"}
    cli = subprocess.run(
        [sys.executable, "-m", "streamrec", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode != 0
    assert "SASL" in cli.stdout + cli.stderr and "authentication" in cli.stdout + cli.stderr
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "ingest-refused.log"
    worker = spawn("ingest-refused", [sys.executable, "-m", "streamrec", "ingest"], log_path, env)
    try:
        wait_for(lambda: not worker.alive(), REFUSED_WITHIN + 20, "ingest to give up on the refused login")
    finally:
        worker.stop()
    ingest_log = log_path.read_text(errors="replace")
    assert "refused the connection" in ingest_log and "SASL authentication error" in ingest_log, ingest_log[
        -2000:
    ]
    logs = {"CLI": cli.stdout + cli.stderr, "ingest": ingest_log}
    assert all(WRONG not in text for text in logs.values()), [
        name for name, text in logs.items() if WRONG in text
    ]
