"""Kafka client configuration, built in one place from the settings.

Every Kafka client streamrec creates gets its connection and security settings from here:

- :func:`client_config` for confluent-kafka (librdkafka) producers, consumers and admin clients;
- :func:`faust_credentials` for ingest's Faust app (``broker_credentials``), which faust-streaming
  turns into aiokafka's ``security_protocol`` / ``sasl_*`` / ``ssl_context`` for its consumer,
  producer and topic creation alike (``credentials_to_aiokafka_auth`` in its aiokafka driver);
- :func:`aiokafka_auth` for aiokafka clients used directly (the benchmarks).

A call site adds only what is its own (``group.id``, ``acks``, ...). The SASL password is a
``SecretStr`` in the settings and is unwrapped only here, into the client's configuration.

:class:`PublishError` is what a producer of streamrec raises when Kafka did not take a message (the
publisher's events, the API's and the CLI's forget requests).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamrec.shared.settings import ConfigError, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


class PublishError(RuntimeError):
    """Kafka did not acknowledge some events (broker unreachable, topic missing, …)."""


def require_bootstrap(settings: Settings) -> str:
    """The bootstrap servers, or a one-line ConfigError."""
    if settings.kafka_bootstrap is None:
        raise ConfigError(
            "STREAMREC_KAFKA_BOOTSTRAP not set: point it at your Kafka, "
            "or use `streamrec dev` to start an embedded one"
        )
    return settings.kafka_bootstrap


def security_config(settings: Settings) -> dict[str, Any]:
    """librdkafka's security properties for the settings (empty for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_username is not None and settings.kafka_sasl_password is not None
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_file is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
    if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
        config["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
        config["ssl.key.location"] = str(settings.kafka_ssl_key_file)
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def client_config(settings: Settings, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A confluent-kafka config: bootstrap servers and security from ``settings``, plus ``properties``.

    Security properties cannot come from a call site, so that none weakens them by accident.
    """
    config: dict[str, Any] = {"bootstrap.servers": require_bootstrap(settings)}
    for key, value in (properties or {}).items():
        if key.startswith(("security.", "sasl.", "ssl.")):
            raise ValueError(f"{key} comes from the settings, not from a call site")
        config[key] = value
    config.update(security_config(settings))
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Python (aiokafka) clients; None unless the protocol uses TLS.

    Verifies the broker's certificate and host name against ``kafka_ssl_ca_file`` (else the
    system trust store), like librdkafka does by default.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            str(settings.kafka_ssl_cert_file),
            str(settings.kafka_ssl_key_file),
            password=password.get_secret_value() if password else None,
        )
    return context


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the settings; None for PLAINTEXT.

    SASLCredentials with an SSL context become SASL_SSL in faust-streaming, without one
    SASL_PLAINTEXT; SSLCredentials are SSL.
    """
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` for the security settings."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol, "ssl_context": ssl_context(settings)}
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def aiokafka_config(settings: Settings, **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of an aiokafka client: bootstrap servers + security, then ``kwargs``."""
    return {"bootstrap_servers": require_bootstrap(settings), **kwargs, **aiokafka_auth(settings)}
