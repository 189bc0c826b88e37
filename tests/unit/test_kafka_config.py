"""Kafka client configuration from the settings: librdkafka dicts, Faust credentials, aiokafka kwargs.

What the clients do with them against a real broker is in tests/integration/test_kafka_security.py;
these check the mapping itself, including how faust-streaming hands the credentials to aiokafka.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streamrec.ingest.app import create_app
from streamrec.shared.kafka_config import (
    aiokafka_auth,
    aiokafka_config,
    client_config,
    faust_credentials,
    ssl_context,
)
from streamrec.shared.settings import ConfigError, Settings

from support import TlsFiles, make_tls_files

SECRET = "s3cret-kafka-pw"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def sasl(protocol: str, mechanism: str = "SCRAM-SHA-512", **more: object) -> Settings:
    return Settings(
        kafka_bootstrap="k1:9093,k2:9093",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc",
        kafka_sasl_password=SECRET,
        **more,
    )


def test_plaintext_adds_nothing_but_the_bootstrap_servers() -> None:
    settings = Settings(kafka_bootstrap="k:9092")
    assert client_config(settings, {"group.id": "g"}) == {"bootstrap.servers": "k:9092", "group.id": "g"}
    assert faust_credentials(settings) is None
    assert aiokafka_auth(settings) == {"security_protocol": "PLAINTEXT", "ssl_context": None}


def test_no_bootstrap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_BOOTSTRAP not set"):
        client_config(Settings())


def test_call_sites_cannot_override_security() -> None:
    with pytest.raises(ValueError, match=r"security\.protocol comes from the settings"):
        client_config(sasl("SASL_SSL"), {"security.protocol": "PLAINTEXT"})


def test_sasl_ssl_for_librdkafka(tls: TlsFiles) -> None:
    settings = sasl("SASL_SSL", kafka_ssl_ca_file=tls.ca)
    assert client_config(settings, {"acks": "all"}) == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "acks": "all",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": SECRET,
        "ssl.ca.location": str(tls.ca),
    }


def test_mutual_tls_for_librdkafka(tls: TlsFiles) -> None:
    settings = Settings(
        kafka_bootstrap="k:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=tls.ca,
        kafka_ssl_cert_file=tls.client_cert,
        kafka_ssl_key_file=tls.client_key,
    )
    assert client_config(settings) == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(tls.ca),
        "ssl.certificate.location": str(tls.client_cert),
        "ssl.key.location": str(tls.client_key),
    }


def test_ssl_context_verifies_the_broker(tls: TlsFiles) -> None:
    assert ssl_context(sasl("SASL_PLAINTEXT")) is None
    context = ssl_context(sasl("SASL_SSL", kafka_ssl_ca_file=tls.ca))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("streamrec test ca" in str(cert["subject"]) for cert in context.get_ca_certs())


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_faust_sasl_credentials_reach_aiokafka(protocol: str, mechanism: str, tls: TlsFiles) -> None:
    extra = {"kafka_ssl_ca_file": tls.ca} if protocol == "SASL_SSL" else {}
    settings = sasl(protocol, mechanism, **extra)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert SECRET not in repr(credentials)
    # What faust-streaming's aiokafka driver passes to AIOKafkaConsumer / AIOKafkaProducer:
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == protocol
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", SECRET)
    assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")
    # ... the same as what the benchmarks' direct aiokafka clients get.
    assert {key: value for key, value in auth.items() if key != "ssl_context"} == {
        key: value for key, value in aiokafka_auth(settings).items() if key != "ssl_context"
    }


def test_faust_ssl_credentials_reach_aiokafka(tls: TlsFiles) -> None:
    settings = Settings(kafka_bootstrap="k:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=tls.ca)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    config = aiokafka_config(settings, acks="all")
    assert config["bootstrap_servers"] == "k:9093" and config["acks"] == "all"
    assert config["security_protocol"] == "SSL"


def test_ingest_app_uses_the_credentials(tmp_path: Path, tls: TlsFiles) -> None:
    settings = sasl("SASL_SSL", kafka_ssl_ca_file=tls.ca, data_dir=tmp_path)
    app = create_app(settings)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    # Faust's producer (which also creates ingest's topics) and consumers read them from app.conf.
    auth = app.producer._settings_auth()
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_plain_password"] == SECRET
