"""The settings object: environment parsing, clear errors, the generated configuration doc."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.embedded import EMBEDDED_SESSION_TIMEOUT_MS, embedded_broker_settings
from streamrec.shared.settings import ConfigError, Settings, configuration_markdown, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reads_streamrec_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("STREAMREC_TOP_N", "7")
    settings = load_settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9093" and settings.top_n == 7
    assert settings.redis_url is None


def test_bad_values_give_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "no-port-here")
    with pytest.raises(ConfigError, match=r"STREAMREC_KAFKA_BOOTSTRAP.*host:port"):
        load_settings()
    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "localhost:6379")
    with pytest.raises(ConfigError, match="STREAMREC_REDIS_URL"):
        load_settings()


def test_services_need_both_servers() -> None:
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL not set"):
        Settings().require_servers()


def test_model_dir_follows_data_dir_unless_set(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).model_dir == tmp_path / "models"
    assert Settings().with_data_dir(tmp_path).model_dir == tmp_path / "models"
    assert Settings(model_dir=Path("/models")).with_data_dir(tmp_path).model_dir == Path("/models")


def test_as_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(kafka_bootstrap="h:1", redis_url="redis://h:2/0", data_dir=tmp_path, top_n=9)
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    assert load_settings().model_dump() == original.model_dump()


def test_configuration_doc_is_current() -> None:
    assert DOC.read_text() == configuration_markdown(), (
        "run: python -m streamrec.shared.settings > docs/configuration.md"
    )


# --- Kafka security --------------------------------------------------------------------------


def test_kafka_sasl_settings_and_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match=r"SASL_SSL needs STREAMREC_KAFKA_SASL_USERNAME and .*PASSWORD"):
        load_settings()
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_PASSWORD", "pw-123")
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "pw-123"
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_SASL_MECHANISM"):
        load_settings()
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMREC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    with pytest.raises(ConfigError, match="SECURITY_PROTOCOL=PLAINTEXT does not use them"):
        load_settings()


def test_kafka_tls_settings_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-----BEGIN-----\n")
    with pytest.raises(ConfigError, match=r"KAFKA_SSL_CA_FILE: .*no such file"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="does not use TLS: set it to SSL or SASL_SSL"):
        load_settings(kafka_ssl_ca_file=ca)  # PLAINTEXT
    with pytest.raises(ConfigError, match=r"SSL_CERT_FILE and .*SSL_KEY_FILE go together"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_cert_file=cert)
    settings = load_settings(
        kafka_security_protocol="SSL", kafka_ssl_ca_file=ca, kafka_ssl_cert_file=cert, kafka_ssl_key_file=key
    )
    assert settings.kafka_ssl_ca_file == ca
    # An empty .env line means unset, not "the current directory".
    monkeypatch.setenv("STREAMREC_KAFKA_SSL_CA_FILE", "")
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_PASSWORD", "")
    assert load_settings().kafka_ssl_ca_file is None and load_settings().kafka_sasl_password is None


def test_kafka_password_never_prints_but_reaches_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-kafka-pw"
    settings = Settings(
        kafka_bootstrap="h:1",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc",
        kafka_sasl_password=secret,
    )
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    env = settings.as_env()
    assert env["STREAMREC_KAFKA_SASL_PASSWORD"] == secret  # the value, not "**********"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child.kafka_sasl_password is not None and child.kafka_sasl_password.get_secret_value() == secret
    assert child.model_dump() == settings.model_dump()
    # A validation error elsewhere does not echo the password either.
    monkeypatch.setenv("STREAMREC_TOP_N", "zero")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert secret not in str(error.value)


def test_session_timeout_outlasts_a_kafka_failover_but_not_on_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMREC_KAFKA_SESSION_TIMEOUT_MS", raising=False)
    settings = Settings()
    assert settings.kafka_session_timeout_ms == 30_000  # above a KRaft broker's 9 s fencing
    assert settings.kafka_heartbeat_interval_ms == 3000
    embedded = settings.model_copy(update=embedded_broker_settings(settings, "127.0.0.1:9"))
    assert embedded.kafka_bootstrap == "127.0.0.1:9"
    assert embedded.kafka_session_timeout_ms == EMBEDDED_SESSION_TIMEOUT_MS == 10_000
    assert embedded.kafka_heartbeat_interval_ms == 3000
    # A session timeout the user set is theirs, on any broker.
    monkeypatch.setenv("STREAMREC_KAFKA_SESSION_TIMEOUT_MS", "6000")
    chosen = Settings()
    assert chosen.model_copy(update=embedded_broker_settings(chosen, "x:1")).kafka_session_timeout_ms == 6000
    assert chosen.kafka_heartbeat_interval_ms == 2000
